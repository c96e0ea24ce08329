"""The shared backbone, the heads written once, and one short module per variant."""

from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)

__all__ = [
    "EffzooForCausalLM",
    "EffzooForMaskedLM",
    "EffzooForMultipleChoice",
    "EffzooForQuestionAnswering",
    "EffzooForSequenceClassification",
    "EffzooForTokenClassification",
    "EffzooModel",
    "EffzooPreTrainedModel",
]
