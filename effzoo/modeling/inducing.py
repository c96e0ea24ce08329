"""The ``inducing`` variant: the shared backbone with Set Transformer's induced set attention (Lee et al. 2019)."""

from __future__ import annotations

from ..attention.inducing import InducingAttention
from ..configs.inducing import InducingConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class InducingPreTrainedModel(EffzooPreTrainedModel):
    config_class = InducingConfig
    mechanism_class = InducingAttention


class InducingModel(EffzooModel, InducingPreTrainedModel):
    pass


class InducingForMaskedLM(EffzooForMaskedLM, InducingPreTrainedModel):
    pass


class InducingForSequenceClassification(EffzooForSequenceClassification, InducingPreTrainedModel):
    pass


class InducingForTokenClassification(EffzooForTokenClassification, InducingPreTrainedModel):
    pass


class InducingForQuestionAnswering(EffzooForQuestionAnswering, InducingPreTrainedModel):
    pass


class InducingForMultipleChoice(EffzooForMultipleChoice, InducingPreTrainedModel):
    pass
