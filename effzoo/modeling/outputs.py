"""Transformers' standard output classes, each extended minimally by the backbone options' fields.

Every field added here is ``None`` unless its option is on, so a default model returns the
same values (and the same tuples with ``return_dict=False``) as the standard classes.

- Mixture of experts (Switch-style, as Transformers' ``Seq2SeqMoEOutput``): ``aux_loss`` (the
  load-balancing loss) and ``z_loss`` (the router z-loss), each the mean over the MoE layers and
  already added to ``loss`` with their coefficients when labels are given; ``router_logits``, one
  (batch, length, num_experts) float32 tensor per MoE layer, when ``output_router_logits``.
- PonderNet (sequence classification, multiple choice): ``halting_probabilities`` pₙ (batch, layers)
  and ``layers_used`` (batch,), the number of layers each example ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


#: The output field that holds the decoding cache: ``cache`` from Transformers 5.24 on,
#: ``past_key_values`` before (the old name still works there, with a deprecation warning).
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithCrossAttentions.__dataclass_fields__ else "past_key_values"


@dataclass
class EffzooModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The encoder's outputs; with experts, also ``dropped_tokens``: assignments over capacity per MoE layer."""

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    dropped_tokens: torch.LongTensor | None = None


@dataclass
class EffzooMaskedLMOutput(MaskedLMOutput):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EffzooCausalLMOutput(CausalLMOutputWithCrossAttentions):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EffzooSequenceClassifierOutput(SequenceClassifierOutput):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    halting_probabilities: torch.FloatTensor | None = None
    layers_used: torch.LongTensor | None = None


@dataclass
class EffzooTokenClassifierOutput(TokenClassifierOutput):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EffzooQuestionAnsweringOutput(QuestionAnsweringModelOutput):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EffzooMultipleChoiceOutput(MultipleChoiceModelOutput):
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    halting_probabilities: torch.FloatTensor | None = None
    layers_used: torch.LongTensor | None = None
