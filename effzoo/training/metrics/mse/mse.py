"""Mean squared error as a local ``evaluate`` module, for regression.

Shipped inside effzoo so that ``evaluate.load`` works offline.
"""

import datasets
import evaluate
import numpy as np


class MSE(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean squared error between predictions and references.",
            citation="",
            inputs_description="predictions and references: lists of floats.",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"mse": float(np.mean((np.asarray(predictions) - np.asarray(references)) ** 2))}
