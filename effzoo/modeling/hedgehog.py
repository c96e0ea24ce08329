"""The ``hedgehog`` variant: the shared backbone with Hedgehog's learnable kernel attention."""

from __future__ import annotations

from ..attention.kernel import KernelAttention
from ..configs.hedgehog import HedgehogConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class HedgehogPreTrainedModel(EffzooPreTrainedModel):
    config_class = HedgehogConfig
    mechanism_class = KernelAttention


class HedgehogModel(EffzooModel, HedgehogPreTrainedModel):
    pass


class HedgehogForMaskedLM(EffzooForMaskedLM, HedgehogPreTrainedModel):
    pass


class HedgehogForCausalLM(EffzooForCausalLM, HedgehogPreTrainedModel):
    pass


class HedgehogForSequenceClassification(EffzooForSequenceClassification, HedgehogPreTrainedModel):
    pass


class HedgehogForTokenClassification(EffzooForTokenClassification, HedgehogPreTrainedModel):
    pass


class HedgehogForQuestionAnswering(EffzooForQuestionAnswering, HedgehogPreTrainedModel):
    pass


class HedgehogForMultipleChoice(EffzooForMultipleChoice, HedgehogPreTrainedModel):
    pass
