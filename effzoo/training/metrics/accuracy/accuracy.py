"""Accuracy as a local ``evaluate`` module: the share of predictions equal to the references.

Shipped inside effzoo so that ``evaluate.load`` works offline (the Hub's ``accuracy``
module is fetched at run time).
"""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy: correct predictions / all predictions.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}
