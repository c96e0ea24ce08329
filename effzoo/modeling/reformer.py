"""The ``reformer`` variant: the shared backbone with Reformer's LSH attention (Kitaev et al. 2020)."""

from __future__ import annotations

from ..attention.lsh import LSHAttention
from ..configs.reformer import EffzooReformerConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class EffzooReformerPreTrainedModel(EffzooPreTrainedModel):
    config_class = EffzooReformerConfig
    mechanism_class = LSHAttention


class EffzooReformerModel(EffzooModel, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForMaskedLM(EffzooForMaskedLM, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForCausalLM(EffzooForCausalLM, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForSequenceClassification(EffzooForSequenceClassification, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForTokenClassification(EffzooForTokenClassification, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForQuestionAnswering(EffzooForQuestionAnswering, EffzooReformerPreTrainedModel):
    pass


class EffzooReformerForMultipleChoice(EffzooForMultipleChoice, EffzooReformerPreTrainedModel):
    pass
