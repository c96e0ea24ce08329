"""The ``nystrom`` variant: the shared backbone with Nyström attention (Xiong et al. 2021, Nyströmformer).

Bidirectional only, so there is no causal LM head."""

from __future__ import annotations

from ..attention.nystrom import NystromAttention
from ..configs.nystrom import NystromConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class NystromPreTrainedModel(EffzooPreTrainedModel):
    config_class = NystromConfig
    mechanism_class = NystromAttention


class NystromModel(EffzooModel, NystromPreTrainedModel):
    pass


class NystromForMaskedLM(EffzooForMaskedLM, NystromPreTrainedModel):
    pass


class NystromForSequenceClassification(EffzooForSequenceClassification, NystromPreTrainedModel):
    pass


class NystromForTokenClassification(EffzooForTokenClassification, NystromPreTrainedModel):
    pass


class NystromForQuestionAnswering(EffzooForQuestionAnswering, NystromPreTrainedModel):
    pass


class NystromForMultipleChoice(EffzooForMultipleChoice, NystromPreTrainedModel):
    pass
