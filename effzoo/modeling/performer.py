"""The ``performer`` variant: the shared backbone with FAVOR+ kernel attention."""

from __future__ import annotations

from ..attention.kernel import KernelAttention
from ..configs.performer import PerformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class PerformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = PerformerConfig
    mechanism_class = KernelAttention


class PerformerModel(EffzooModel, PerformerPreTrainedModel):
    pass


class PerformerForMaskedLM(EffzooForMaskedLM, PerformerPreTrainedModel):
    pass


class PerformerForCausalLM(EffzooForCausalLM, PerformerPreTrainedModel):
    pass


class PerformerForSequenceClassification(EffzooForSequenceClassification, PerformerPreTrainedModel):
    pass


class PerformerForTokenClassification(EffzooForTokenClassification, PerformerPreTrainedModel):
    pass


class PerformerForQuestionAnswering(EffzooForQuestionAnswering, PerformerPreTrainedModel):
    pass


class PerformerForMultipleChoice(EffzooForMultipleChoice, PerformerPreTrainedModel):
    pass
