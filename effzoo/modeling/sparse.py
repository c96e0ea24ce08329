"""The ``sparse`` variant: the shared backbone with the Sparse Transformer's strided / fixed patterns."""

from __future__ import annotations

from ..attention.strided import StridedAttention
from ..configs.sparse import SparseConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class SparsePreTrainedModel(EffzooPreTrainedModel):
    config_class = SparseConfig
    mechanism_class = StridedAttention


class SparseModel(EffzooModel, SparsePreTrainedModel):
    pass


class SparseForMaskedLM(EffzooForMaskedLM, SparsePreTrainedModel):
    pass


class SparseForCausalLM(EffzooForCausalLM, SparsePreTrainedModel):
    pass


class SparseForSequenceClassification(EffzooForSequenceClassification, SparsePreTrainedModel):
    pass


class SparseForTokenClassification(EffzooForTokenClassification, SparsePreTrainedModel):
    pass


class SparseForQuestionAnswering(EffzooForQuestionAnswering, SparsePreTrainedModel):
    pass


class SparseForMultipleChoice(EffzooForMultipleChoice, SparsePreTrainedModel):
    pass
