"""F1 as a local ``evaluate`` module: macro (default), micro or binary averaging.

Shipped inside effzoo so that ``evaluate.load`` works offline.
"""

import datasets
import evaluate
import numpy as np


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 = 2·precision·recall / (precision + recall), averaged over classes.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids; average: macro|micro|binary.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", pos_label=1):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            classes = [pos_label]
        else:
            classes = np.union1d(predictions, references)
        true_positives = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
        predicted = np.array([np.sum(predictions == c) for c in classes])
        actual = np.array([np.sum(references == c) for c in classes])
        if average == "micro":
            true_positives, predicted, actual = true_positives.sum(), predicted.sum(), actual.sum()
        denominator = predicted + actual
        scores = np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), 0.0)
        return {"f1": float(np.mean(scores))}
