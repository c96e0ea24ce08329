"""The ``linformer`` variant: the shared backbone with Linformer's projected attention (Wang et al. 2020).

No causal LM: Linformer's projection mixes every position (``LinformerAttention.supports_causal`` is False)."""

from __future__ import annotations

from ..attention.linformer import LinformerAttention
from ..configs.linformer import LinformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class LinformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = LinformerConfig
    mechanism_class = LinformerAttention


class LinformerModel(EffzooModel, LinformerPreTrainedModel):
    pass


class LinformerForMaskedLM(EffzooForMaskedLM, LinformerPreTrainedModel):
    pass


class LinformerForSequenceClassification(EffzooForSequenceClassification, LinformerPreTrainedModel):
    pass


class LinformerForTokenClassification(EffzooForTokenClassification, LinformerPreTrainedModel):
    pass


class LinformerForQuestionAnswering(EffzooForQuestionAnswering, LinformerPreTrainedModel):
    pass


class LinformerForMultipleChoice(EffzooForMultipleChoice, LinformerPreTrainedModel):
    pass
