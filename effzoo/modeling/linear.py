"""The ``linear`` variant: the shared backbone with elu(x)+1 kernel attention."""

from __future__ import annotations

from ..attention.kernel import KernelAttention
from ..configs.linear import LinearConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class LinearPreTrainedModel(EffzooPreTrainedModel):
    config_class = LinearConfig
    mechanism_class = KernelAttention


class LinearModel(EffzooModel, LinearPreTrainedModel):
    pass


class LinearForMaskedLM(EffzooForMaskedLM, LinearPreTrainedModel):
    pass


class LinearForCausalLM(EffzooForCausalLM, LinearPreTrainedModel):
    pass


class LinearForSequenceClassification(EffzooForSequenceClassification, LinearPreTrainedModel):
    pass


class LinearForTokenClassification(EffzooForTokenClassification, LinearPreTrainedModel):
    pass


class LinearForQuestionAnswering(EffzooForQuestionAnswering, LinearPreTrainedModel):
    pass


class LinearForMultipleChoice(EffzooForMultipleChoice, LinearPreTrainedModel):
    pass
