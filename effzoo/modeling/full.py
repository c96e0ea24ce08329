"""The ``full`` variant: the shared backbone with exact softmax attention (BERT itself)."""

from __future__ import annotations

from ..attention.full import FullAttention
from ..configs.full import FullConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class FullPreTrainedModel(EffzooPreTrainedModel):
    config_class = FullConfig
    mechanism_class = FullAttention


class FullModel(EffzooModel, FullPreTrainedModel):
    pass


class FullForMaskedLM(EffzooForMaskedLM, FullPreTrainedModel):
    pass


class FullForCausalLM(EffzooForCausalLM, FullPreTrainedModel):
    pass


class FullForSequenceClassification(EffzooForSequenceClassification, FullPreTrainedModel):
    pass


class FullForTokenClassification(EffzooForTokenClassification, FullPreTrainedModel):
    pass


class FullForQuestionAnswering(EffzooForQuestionAnswering, FullPreTrainedModel):
    pass


class FullForMultipleChoice(EffzooForMultipleChoice, FullPreTrainedModel):
    pass
