"""The ``axial`` variant: the shared backbone with axial (row and column) attention."""

from __future__ import annotations

from ..attention.axial import AxialAttention
from ..configs.axial import AxialConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class AxialPreTrainedModel(EffzooPreTrainedModel):
    config_class = AxialConfig
    mechanism_class = AxialAttention


class AxialModel(EffzooModel, AxialPreTrainedModel):
    pass


class AxialForMaskedLM(EffzooForMaskedLM, AxialPreTrainedModel):
    pass


class AxialForCausalLM(EffzooForCausalLM, AxialPreTrainedModel):
    pass


class AxialForSequenceClassification(EffzooForSequenceClassification, AxialPreTrainedModel):
    pass


class AxialForTokenClassification(EffzooForTokenClassification, AxialPreTrainedModel):
    pass


class AxialForQuestionAnswering(EffzooForQuestionAnswering, AxialPreTrainedModel):
    pass


class AxialForMultipleChoice(EffzooForMultipleChoice, AxialPreTrainedModel):
    pass
