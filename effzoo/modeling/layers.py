"""The parts of a BERT layer around the attention mechanism: projections, residuals, feed-forward.

Module names are BERT's (``attention.self.query``, ``attention.output.dense``,
``intermediate.dense``, ``output.LayerNorm``), so a BERT layer's state dict loads unchanged. The
mixture-of-experts layer (``moe.py``) reuses the attention block and the expert's first half.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from ..attention.base import AttentionMechanism
from ..configs.base import EffzooConfig


#: The mechanism input under which the backbone passes a list that each layer's attention appends its
#: weights to, when ``output_attentions`` is asked for. It travels with the other mechanism inputs, so
#: every path through the layers (mixture of experts, reversible, checkpointed) carries it alike.
ATTENTION_WEIGHTS_SINK = "_attention_weights_sink"


class EffzooSelfAttention(nn.Module):
    """Q/K/V projections around a mechanism: hidden states -> per-head (q, k, v) -> context."""

    def __init__(self, config: EffzooConfig, mechanism_class: type[AttentionMechanism], layer_idx: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.mechanism = mechanism_class(config.layer_config(layer_idx), layer_idx=layer_idx)
        self._passes_hidden_states = "hidden_states" in keyword_inputs(mechanism_class)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        causal: bool,
        cache: Any,
        **mechanism_inputs: Any,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        heads_shape = (batch, length, self.num_heads, self.head_dim)
        q = self.query(hidden_states).view(heads_shape).transpose(1, 2)
        k = self.key(hidden_states).view(heads_shape).transpose(1, 2)
        v = self.value(hidden_states).view(heads_shape).transpose(1, 2)
        weights_sink = mechanism_inputs.pop(ATTENTION_WEIGHTS_SINK, None)
        if self._passes_hidden_states:  # for projections of its own (Longformer's global ones)
            mechanism_inputs["hidden_states"] = hidden_states
        if weights_sink is None:
            context = self.mechanism(q, k, v, padding_mask=padding_mask, causal=causal, cache=cache, **mechanism_inputs)
        else:
            context, weights = self.mechanism(
                q, k, v, padding_mask=padding_mask, causal=causal, cache=cache, output_attentions=True,
                **mechanism_inputs,
            )
            weights_sink.append(weights)
        return context.transpose(1, 2).reshape(batch, length, -1)


class EffzooResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's SelfOutput and Output in one class."""

    def __init__(self, config: EffzooConfig, input_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class EffzooAttention(nn.Module):
    """Self-attention block: ``self`` (projections + mechanism) and ``output`` (post-LN residual)."""

    def __init__(self, config: EffzooConfig, mechanism_class: type[AttentionMechanism], layer_idx: int) -> None:
        super().__init__()
        self.self = EffzooSelfAttention(config, mechanism_class, layer_idx)
        self.output = EffzooResidualOutput(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.output(self.self(hidden_states, *args, **kwargs), hidden_states)


class EffzooIntermediate(nn.Module):
    """The feed-forward expansion: dense to ``intermediate_size`` and the activation."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


def apply_in_chunks(function: Any, chunk_size: int, hidden_states: torch.Tensor) -> torch.Tensor:
    """``function`` over chunks of ``chunk_size`` positions (the last may be shorter), concatenated.

    Transformers' ``chunk_size_feed_forward`` (the Reformer's chunked feed-forward): a position-wise
    function gives the same result, with intermediate activations of chunk_size positions at a time.
    Unlike ``apply_chunking_to_forward``, any length works. ``chunk_size`` 0: one call.
    """
    if not chunk_size or hidden_states.shape[1] <= chunk_size:
        return function(hidden_states)
    return torch.cat([function(chunk) for chunk in hidden_states.split(chunk_size, dim=1)], dim=1)


class EffzooLayer(GradientCheckpointingLayer):
    """One post-LN transformer layer (BERT's): attention, then the (optionally chunked) feed-forward."""

    def __init__(self, config: EffzooConfig, mechanism_class: type[AttentionMechanism], layer_idx: int) -> None:
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.attention = EffzooAttention(config, mechanism_class, layer_idx)
        self.intermediate = EffzooIntermediate(config)
        self.output = EffzooResidualOutput(config, config.intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        past_key_values: Any = None,
        **mechanism_inputs: Any,
    ) -> torch.Tensor:
        # `past_key_values` keeps Transformers' name so that gradient checkpointing drops the cache.
        attention_output = self.attention(hidden_states, padding_mask, causal, past_key_values, **mechanism_inputs)
        return apply_in_chunks(self.feed_forward, self.chunk_size_feed_forward, attention_output)

    def feed_forward(self, attention_output: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(attention_output), attention_output)

    def feed_forward_branch(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
                            ) -> tuple[torch.Tensor, None]:
        """The feed-forward without residual and LayerNorm (dense, dropout), for the reversible layers."""
        def branch(chunk: torch.Tensor) -> torch.Tensor:
            return self.output.dropout(self.output.dense(self.intermediate(chunk)))

        return apply_in_chunks(branch, self.chunk_size_feed_forward, hidden_states), None


def keyword_inputs(mechanism_class: type[AttentionMechanism]) -> set[str]:
    """Extra keyword inputs a mechanism declares beyond the base contract."""
    base = set(inspect.signature(AttentionMechanism.forward).parameters)
    return set(inspect.signature(mechanism_class.forward).parameters) - base
