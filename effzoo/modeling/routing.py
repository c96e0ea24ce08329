"""The ``routing`` variant: the shared backbone with the Routing Transformer's attention (Roy et al. 2021)."""

from __future__ import annotations

from ..attention.routing import RoutingAttention
from ..configs.routing import RoutingConfig
from .backbone import EffzooModel, EffzooPreTrainedModel
from .heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)


class RoutingPreTrainedModel(EffzooPreTrainedModel):
    config_class = RoutingConfig
    mechanism_class = RoutingAttention


class RoutingModel(EffzooModel, RoutingPreTrainedModel):
    pass


class RoutingForMaskedLM(EffzooForMaskedLM, RoutingPreTrainedModel):
    pass


class RoutingForCausalLM(EffzooForCausalLM, RoutingPreTrainedModel):
    pass


class RoutingForSequenceClassification(EffzooForSequenceClassification, RoutingPreTrainedModel):
    pass


class RoutingForTokenClassification(EffzooForTokenClassification, RoutingPreTrainedModel):
    pass


class RoutingForQuestionAnswering(EffzooForQuestionAnswering, RoutingPreTrainedModel):
    pass


class RoutingForMultipleChoice(EffzooForMultipleChoice, RoutingPreTrainedModel):
    pass
