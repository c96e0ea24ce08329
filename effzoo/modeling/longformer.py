"""The ``longformer`` variant: the shared backbone with Longformer's sliding-window and global attention."""

from __future__ import annotations

from ..attention.sliding_window import SlidingWindowAttention
from ..configs.longformer import EffzooLongformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class EffzooLongformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = EffzooLongformerConfig
    mechanism_class = SlidingWindowAttention


class EffzooLongformerModel(EffzooModel, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForMaskedLM(EffzooForMaskedLM, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForCausalLM(EffzooForCausalLM, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForSequenceClassification(EffzooForSequenceClassification, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForTokenClassification(EffzooForTokenClassification, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForQuestionAnswering(EffzooForQuestionAnswering, EffzooLongformerPreTrainedModel):
    pass


class EffzooLongformerForMultipleChoice(EffzooForMultipleChoice, EffzooLongformerPreTrainedModel):
    pass
