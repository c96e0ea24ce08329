"""The ``bigbird`` variant: the shared backbone with BigBird's window, global and random blocks (bidirectional only)."""

from __future__ import annotations

from ..attention.random_blocks import RandomBlocksAttention
from ..configs.bigbird import BigBirdConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class BigBirdPreTrainedModel(EffzooPreTrainedModel):
    config_class = BigBirdConfig
    mechanism_class = RandomBlocksAttention


class BigBirdModel(EffzooModel, BigBirdPreTrainedModel):
    pass


class BigBirdForMaskedLM(EffzooForMaskedLM, BigBirdPreTrainedModel):
    pass


class BigBirdForSequenceClassification(EffzooForSequenceClassification, BigBirdPreTrainedModel):
    pass


class BigBirdForTokenClassification(EffzooForTokenClassification, BigBirdPreTrainedModel):
    pass


class BigBirdForQuestionAnswering(EffzooForQuestionAnswering, BigBirdPreTrainedModel):
    pass


class BigBirdForMultipleChoice(EffzooForMultipleChoice, BigBirdPreTrainedModel):
    pass
