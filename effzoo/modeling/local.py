"""The ``local`` variant: the shared backbone with blocked local attention."""

from __future__ import annotations

from ..attention.local import LocalAttention
from ..configs.local import LocalConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class LocalPreTrainedModel(EffzooPreTrainedModel):
    config_class = LocalConfig
    mechanism_class = LocalAttention


class LocalModel(EffzooModel, LocalPreTrainedModel):
    pass


class LocalForMaskedLM(EffzooForMaskedLM, LocalPreTrainedModel):
    pass


class LocalForCausalLM(EffzooForCausalLM, LocalPreTrainedModel):
    pass


class LocalForSequenceClassification(EffzooForSequenceClassification, LocalPreTrainedModel):
    pass


class LocalForTokenClassification(EffzooForTokenClassification, LocalPreTrainedModel):
    pass


class LocalForQuestionAnswering(EffzooForQuestionAnswering, LocalPreTrainedModel):
    pass


class LocalForMultipleChoice(EffzooForMultipleChoice, LocalPreTrainedModel):
    pass
