"""Switch mixture-of-experts feed-forward (Fedus et al. 2021): router, capacity, dispatch, losses.

A MoE layer replaces BERT's one feed-forward by ``num_experts`` copies (``experts.K``, each
``intermediate.dense`` → activation → ``output.dense``) and a router (``router.weight``, no bias).
Each real token goes to its ``num_experts_per_token`` most probable experts; the output is the
gated sum of their outputs, and the layer's residual and LayerNorm are BERT's.

- **Selective precision**: the router computes in float32 whatever the model's dtype (§2.4).
- **Capacity**: in each sequence an expert takes at most ⌈capacity_factor · n · k / E⌉ assignments,
  n the sequence's real tokens, k per token, E experts (§2.2). Assignments are served first-choice
  first, then in position order; those over capacity are dropped and counted, and a token with all
  of its assignments dropped skips the feed-forward: its residual passes unchanged. Per-sequence
  groups make a sequence's routing independent of the batch it is in (padding invariance).
- **Padding** tokens are never routed, take no capacity, and are left out of both losses.
- **Gates**: gₖ = pₖ / sg(Σⱼ pⱼ), the selected experts' probabilities divided by their (detached)
  sum. In the forward the gates sum to 1 (exactly 1 for top-1), so an expert that equals the dense
  feed-forward reproduces it: an upcycled model starts as its dense source (Komatsuzaki et al. 2022).
  In the backward the router still learns from the task: ∂gₖ = ∂pₖ / Σⱼ pⱼ, Switch's gate
  gradient (gₖ = pₖ) scaled by 1/Σⱼ pⱼ, which for top-1 is ∂ log pₖ. Normalising without the
  detach would give top-1 a constant gate and no task gradient at all.
- **Losses** (§2.2 and Zoph et al. 2022), over the real tokens T of the batch:
  balance = E · Σᵢ fᵢ · Pᵢ with fᵢ the fraction of the T·k assignments chosen for expert i (before
  capacity) and Pᵢ the mean router probability of expert i (1 when perfectly balanced);
  z = mean over T of (log Σᵢ exp xᵢ)², x the router logits.

The layer itself (:class:`EffzooMoELayer`: the attention block, the router, the experts, BERT's
residual and LayerNorm) is at the end of this module. Dispatch has no Python loop over tokens: assignments are sorted by expert and cut with ``split``,
each expert runs one matmul pair on its slice, and ``index_add_`` scatters the gated results back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

from ..attention.base import AttentionMechanism
from ..configs.base import EffzooConfig
from .layers import EffzooAttention, EffzooIntermediate


class Routing(NamedTuple):
    """The router's decisions for a (batch, length) input with E experts, k per token."""

    logits: torch.Tensor  # (batch, length, E) float32
    experts: torch.Tensor  # (batch, length, k) long: the chosen experts, most probable first
    gates: torch.Tensor  # (batch, length, k) float32: the weights of their outputs
    kept: torch.Tensor  # (batch, length, k) bool: the assignment is served (a real token within capacity)
    balance_loss: torch.Tensor  # scalar: load-balancing loss of this layer
    z_loss: torch.Tensor  # scalar: router z-loss of this layer
    dropped: torch.Tensor  # scalar long: assignments of real tokens over capacity


class SwitchRouter(nn.Module):
    """Top-k router with per-sequence expert capacity; its one parameter is ``weight`` (E × hidden)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_token
        self.capacity_factor = config.capacity_factor
        self.eval_capacity_factor = config.eval_capacity_factor
        self.jitter_noise = config.router_jitter_noise
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        nn.init.normal_(self.weight, std=config.initializer_range)  # the model's _init_weights does the same

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None) -> Routing:
        real = _real_tokens(hidden_states, padding_mask)
        router_input = hidden_states.float()
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(router_input).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            router_input = router_input * noise
        logits = F.linear(router_input, self.weight.float())
        probabilities = logits.softmax(dim=-1)
        top_probabilities, experts = probabilities.topk(self.top_k, dim=-1)
        gates = top_probabilities / top_probabilities.sum(dim=-1, keepdim=True).detach()
        capacity_factor = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = expert_capacity(real.sum(-1), capacity_factor, self.num_experts, self.top_k)
        kept = within_capacity(experts, real, capacity, self.num_experts)
        return Routing(
            logits=logits,
            experts=experts,
            gates=gates,
            kept=kept,
            balance_loss=load_balancing_loss(probabilities, experts, real),
            z_loss=router_z_loss(logits, real),
            dropped=(real[..., None] & ~kept).sum(),
        )


def _real_tokens(hidden_states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    if padding_mask is None:
        return torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
    return padding_mask[:, -hidden_states.shape[1] :].bool()  # a cache's mask covers past tokens too


def expert_capacity(real_per_sequence: torch.Tensor, capacity_factor: float, num_experts: int,
                    top_k: int) -> torch.Tensor:
    """⌈capacity_factor · n · k / E⌉ assignments per expert, for each sequence of n real tokens."""
    return torch.ceil(real_per_sequence.double() * (capacity_factor * top_k / num_experts)).long()


def within_capacity(experts: torch.Tensor, real: torch.Tensor, capacity: torch.Tensor,
                    num_experts: int) -> torch.Tensor:
    """Which assignments each expert serves: first choices before second ones, then by position.

    ``experts`` (batch, length, k), ``real`` (batch, length), ``capacity`` (batch,) -> (batch, length, k) bool.
    """
    batch, length, top_k = experts.shape
    one_hot = F.one_hot(experts, num_experts) * real[..., None, None]  # (batch, length, k, E); padding: zeros
    queue = one_hot.transpose(1, 2).reshape(batch, top_k * length, num_experts)  # slot-major priority
    position = (queue.cumsum(dim=1) * queue).sum(-1) - 1  # place of each assignment in its expert's queue
    position = position.view(batch, top_k, length).transpose(1, 2)
    return real[..., None] & (position < capacity.view(batch, 1, 1))


def load_balancing_loss(probabilities: torch.Tensor, experts: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E · Σᵢ fᵢ · Pᵢ over the real tokens (Switch Transformer, eq. 4-6); 1 when perfectly balanced."""
    num_experts = probabilities.shape[-1]
    weight = real.to(probabilities.dtype)
    tokens = weight.sum().clamp(min=1.0)
    chosen = F.one_hot(experts, num_experts).to(probabilities.dtype).sum(dim=-2)  # (batch, length, E)
    fraction = (chosen * weight[..., None]).sum(dim=(0, 1)) / (tokens * experts.shape[-1])
    mean_probability = (probabilities * weight[..., None]).sum(dim=(0, 1)) / tokens
    return num_experts * (fraction * mean_probability).sum()


def router_z_loss(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of (log Σᵢ exp xᵢ)² (ST-MoE, Zoph et al. 2022, eq. 5)."""
    weight = real.to(logits.dtype)
    return (torch.logsumexp(logits, dim=-1).square() * weight).sum() / weight.sum().clamp(min=1.0)


def dispatch(hidden_states: torch.Tensor, routing: Routing, experts: nn.ModuleList) -> torch.Tensor:
    """Σₖ gₖ · expert_k(x) for each token's served assignments; zeros for a token with none.

    Assignments are sorted by expert (stable, so each expert sees its tokens in order), cut into one
    slice per expert, and each expert runs once on its slice, even an empty one (so that every expert
    takes part in the graph, as distributed training expects).
    """
    batch, length, hidden_size = hidden_states.shape
    flat = hidden_states.reshape(batch * length, hidden_size)
    kept = routing.kept.reshape(-1)
    top_k = routing.experts.shape[-1]
    token = torch.arange(batch * length, device=flat.device).repeat_interleave(top_k)[kept]
    expert = routing.experts.reshape(-1)[kept]
    gate = routing.gates.reshape(-1)[kept]
    expert, order = expert.sort(stable=True)
    token, gate = token[order], gate[order]
    counts = torch.bincount(expert, minlength=len(experts)).tolist()
    slices = flat.index_select(0, token).split(counts)
    outputs = torch.cat([module(part) for module, part in zip(experts, slices)])
    outputs = outputs * gate.to(outputs.dtype)[:, None]
    combined = torch.zeros_like(flat).index_add_(0, token, outputs)
    return combined.view(batch, length, hidden_size)


def summarise_routing(routings: list[Routing]) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]] | None:
    """The model-level router outputs: losses averaged over the MoE layers, logits and drops per layer."""
    if not routings:
        return None
    return {
        "aux_loss": torch.stack([routing.balance_loss for routing in routings]).mean(),
        "z_loss": torch.stack([routing.z_loss for routing in routings]).mean(),
        "router_logits": tuple(routing.logits for routing in routings),
        "dropped_tokens": torch.stack([routing.dropped for routing in routings]),
    }


class EffzooExpertOutput(nn.Module):
    """An expert's down-projection, ``experts.K.output.dense`` (dropout and LayerNorm are the layer's)."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


class EffzooExpert(nn.Module):
    """One expert: BERT's feed-forward, ``intermediate.dense`` -> activation -> ``output.dense``."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.intermediate = EffzooIntermediate(config)
        self.output = EffzooExpertOutput(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(hidden_states))


class EffzooMixtureOutput(nn.Module):
    """dropout -> LayerNorm(x + residual) after the experts; ``output.LayerNorm`` as in BERT."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(hidden_states) + residual)


class EffzooMoELayer(GradientCheckpointingLayer):
    """A post-LN layer whose feed-forward is a Switch mixture of experts (see ``moe.py``).

    Returns ``(hidden_states, *routing)``, a flat tuple of tensors (so that every form of gradient
    checkpointing carries the router's losses), where ``routing`` is a :class:`Routing`.
    """

    def __init__(self, config: EffzooConfig, mechanism_class: type[AttentionMechanism], layer_idx: int) -> None:
        super().__init__()
        self.attention = EffzooAttention(config, mechanism_class, layer_idx)
        self.router = SwitchRouter(config)
        self.experts = nn.ModuleList([EffzooExpert(config) for _ in range(config.num_experts)])
        self.output = EffzooMixtureOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        past_key_values: Any = None,
        **mechanism_inputs: Any,
    ) -> tuple[torch.Tensor, ...]:
        attention_output = self.attention(hidden_states, padding_mask, causal, past_key_values, **mechanism_inputs)
        mixture, routing = self.mixture(attention_output, padding_mask)
        return (self.output(mixture, attention_output), *routing)

    def mixture(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, Routing]:
        """Route and run the experts: the gated sum of the chosen experts' outputs, zeros where none served."""
        routing = self.router(hidden_states, padding_mask)
        return dispatch(hidden_states, routing, self.experts), routing

    def feed_forward_branch(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
                            ) -> tuple[torch.Tensor, Routing]:
        """The mixture without residual and LayerNorm (with dropout), for the reversible layers."""
        mixture, routing = self.mixture(hidden_states, padding_mask)
        return self.output.dropout(mixture), routing
