"""The ``memory_compressed`` variant: the shared backbone with memory-compressed attention (Liu et al. 2018)."""

from __future__ import annotations

from ..attention.memory_compressed import MemoryCompressedAttention
from ..configs.memory_compressed import MemoryCompressedConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class MemoryCompressedPreTrainedModel(EffzooPreTrainedModel):
    config_class = MemoryCompressedConfig
    mechanism_class = MemoryCompressedAttention


class MemoryCompressedModel(EffzooModel, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForMaskedLM(EffzooForMaskedLM, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForCausalLM(EffzooForCausalLM, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForSequenceClassification(EffzooForSequenceClassification, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForTokenClassification(EffzooForTokenClassification, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForQuestionAnswering(EffzooForQuestionAnswering, MemoryCompressedPreTrainedModel):
    pass


class MemoryCompressedForMultipleChoice(EffzooForMultipleChoice, MemoryCompressedPreTrainedModel):
    pass
