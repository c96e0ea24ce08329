"""The ``longformer`` variant: the shared backbone with Longformer's sliding-window and global attention."""

from __future__ import annotations

from ..attention.sliding_window import SlidingWindowAttention
from ..configs.longformer import LongformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class LongformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = LongformerConfig
    mechanism_class = SlidingWindowAttention


class LongformerModel(EffzooModel, LongformerPreTrainedModel):
    pass


class LongformerForMaskedLM(EffzooForMaskedLM, LongformerPreTrainedModel):
    pass


class LongformerForCausalLM(EffzooForCausalLM, LongformerPreTrainedModel):
    pass


class LongformerForSequenceClassification(EffzooForSequenceClassification, LongformerPreTrainedModel):
    pass


class LongformerForTokenClassification(EffzooForTokenClassification, LongformerPreTrainedModel):
    pass


class LongformerForQuestionAnswering(EffzooForQuestionAnswering, LongformerPreTrainedModel):
    pass


class LongformerForMultipleChoice(EffzooForMultipleChoice, LongformerPreTrainedModel):
    pass
