"""The ``fastformer`` variant: the shared backbone with Fastformer's additive attention (Wu et al. 2021)."""

from __future__ import annotations

from ..attention.fastformer import FastformerAttention
from ..configs.fastformer import FastformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class FastformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = FastformerConfig
    mechanism_class = FastformerAttention


class FastformerModel(EffzooModel, FastformerPreTrainedModel):
    pass


class FastformerForMaskedLM(EffzooForMaskedLM, FastformerPreTrainedModel):
    pass


class FastformerForSequenceClassification(EffzooForSequenceClassification, FastformerPreTrainedModel):
    pass


class FastformerForTokenClassification(EffzooForTokenClassification, FastformerPreTrainedModel):
    pass


class FastformerForQuestionAnswering(EffzooForQuestionAnswering, FastformerPreTrainedModel):
    pass


class FastformerForMultipleChoice(EffzooForMultipleChoice, FastformerPreTrainedModel):
    pass
