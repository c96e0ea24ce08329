"""The ``bigbird`` variant: the shared backbone with BigBird's window, global and random blocks (bidirectional only)."""

from __future__ import annotations

from ..attention.random_blocks import RandomBlocksAttention
from ..configs.bigbird import EffzooBigBirdConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class EffzooBigBirdPreTrainedModel(EffzooPreTrainedModel):
    config_class = EffzooBigBirdConfig
    mechanism_class = RandomBlocksAttention


class EffzooBigBirdModel(EffzooModel, EffzooBigBirdPreTrainedModel):
    pass


class EffzooBigBirdForMaskedLM(EffzooForMaskedLM, EffzooBigBirdPreTrainedModel):
    pass


class EffzooBigBirdForSequenceClassification(EffzooForSequenceClassification, EffzooBigBirdPreTrainedModel):
    pass


class EffzooBigBirdForTokenClassification(EffzooForTokenClassification, EffzooBigBirdPreTrainedModel):
    pass


class EffzooBigBirdForQuestionAnswering(EffzooForQuestionAnswering, EffzooBigBirdPreTrainedModel):
    pass


class EffzooBigBirdForMultipleChoice(EffzooForMultipleChoice, EffzooBigBirdPreTrainedModel):
    pass
