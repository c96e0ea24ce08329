"""Reversible residual layers (Reformer, Kitaev et al. 2020, §3; Gomez et al. 2017).

The residual stream is split in two, both starting as the embedding output (as the Reformer
code does, ``torch.cat([h, h], -1)``), and each layer maps (X₁, X₂) to

    Y₁ = X₁ + F(X₂),    F = dropout ∘ attention.output.dense ∘ attention(attention.output.LayerNorm(·))
    Y₂ = X₂ + G(Y₁),    G = dropout ∘ feed-forward(output.LayerNorm(·))   (dense or mixture of experts)

so the inputs can be recovered from the outputs: X₂ = Y₂ − G(Y₁), X₁ = Y₁ − F(X₂). The layers keep
BERT's parameter names but are pre-LN (the LayerNorm of each block normalises its input; a post-LN
residual could not be inverted), so a BERT checkpoint is a starting point, not the same function.

Training runs the whole stack inside one autograd function that keeps only its final outputs: the
backward pass walks the layers from the top, recomputing each block from the layer's outputs and
back-propagating through it, so activation memory does not grow with depth. The RNG state before
each block is saved in the forward and restored for its recomputation, so dropout masks (and any
other random draw: router jitter, BigBird's random blocks) are the same in both passes. Parameter
gradients are returned through the function, so autograd accumulates them as usual (hooks, DDP).
A mixture-of-experts feed-forward's balance and z losses are outputs of the function too, so their
gradients reach the routers; its router logits come back detached.

The stack runs without recomputation (an ordinary graph) when nothing needs a gradient, with a
cache (incremental decoding), when every layer's state is asked for, or with ``recompute=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .moe import Routing


def attention_branch(
    layer: nn.Module, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None, causal: bool, cache: Any,
    mechanism_inputs: dict[str, Any],
) -> torch.Tensor:
    """F(X₂): the pre-LN attention block of ``layer`` without its residual."""
    attention = layer.attention
    normed = attention.output.LayerNorm(hidden_states)
    context = attention.self(normed, padding_mask, causal, cache, **mechanism_inputs)
    return attention.output.dropout(attention.output.dense(context))


def feed_forward_branch(
    layer: nn.Module, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
) -> tuple[torch.Tensor, Routing | None]:
    """G(Y₁): the pre-LN feed-forward block of ``layer`` without its residual, and its routing if MoE."""
    return layer.feed_forward_branch(layer.output.LayerNorm(hidden_states), padding_mask)


class RngState:
    """The CPU RNG state (and the accelerator's, for a tensor on one) at one point of the forward."""

    def __init__(self, like: torch.Tensor) -> None:
        self.cpu = torch.get_rng_state()
        self.device = like.device if like.device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    @contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block with the saved state; the RNG continues afterwards as if nothing ran."""
        with torch.random.fork_rng(devices=[self.device] if self.device is not None else []):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class _Stack:
    """What the autograd function needs besides tensors: the layers and their non-tensor inputs."""

    def __init__(self, layers: nn.ModuleList, padding_mask: torch.Tensor | None, causal: bool,
                 mechanism_inputs: dict[str, Any]) -> None:
        self.layers = layers
        self.padding_mask = padding_mask
        self.causal = causal
        self.mechanism_inputs = mechanism_inputs
        self.parameters = [[p for p in layer.parameters() if p.requires_grad] for layer in layers]
        self.routings: list[Routing] = []  # detached, from the forward pass

    def attention(self, layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return attention_branch(layer, hidden_states, self.padding_mask, self.causal, None, self.mechanism_inputs)

    def feed_forward(self, layer: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        return feed_forward_branch(layer, hidden_states, self.padding_mask)


class ReversibleStack(torch.autograd.Function):
    """(X₁, X₂) -> (Y₁, Y₂, balance losses…, z losses…) through every layer, storing no activations."""

    @staticmethod
    def forward(ctx: Any, stream_1: torch.Tensor, stream_2: torch.Tensor, stack: _Stack,
                *parameters: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rng_states = []
        balance_losses, z_losses = [], []
        with torch.no_grad():
            for layer in stack.layers:
                attention_rng = RngState(stream_2)
                stream_1 = stream_1 + stack.attention(layer, stream_2)
                feed_forward_rng = RngState(stream_1)
                branch, routing = stack.feed_forward(layer, stream_1)
                stream_2 = stream_2 + branch
                rng_states.append((attention_rng, feed_forward_rng))
                if routing is not None:
                    stack.routings.append(routing)
                    balance_losses.append(routing.balance_loss)
                    z_losses.append(routing.z_loss)
        ctx.stack = stack
        ctx.rng_states = rng_states
        ctx.save_for_backward(stream_1, stream_2)
        return (stream_1, stream_2, *balance_losses, *z_losses)

    @staticmethod
    def backward(ctx: Any, grad_1: torch.Tensor, grad_2: torch.Tensor,
                 *grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        stack: _Stack = ctx.stack
        stream_1, stream_2 = ctx.saved_tensors
        num_moe = len(grad_losses) // 2
        grad_balance, grad_z = grad_losses[:num_moe], grad_losses[num_moe:]
        moe_index = num_moe
        parameter_grads: list[list[torch.Tensor | None]] = [[] for _ in stack.layers]
        for index in reversed(range(len(stack.layers))):
            layer, parameters = stack.layers[index], stack.parameters[index]
            attention_rng, feed_forward_rng = ctx.rng_states[index]
            # Y₂ = X₂ + G(Y₁): recompute G, recover X₂, and add Gᵀ·dY₂ to dY₁.
            with torch.enable_grad(), feed_forward_rng.restored():
                output_1 = stream_1.detach().requires_grad_()
                branch, routing = stack.feed_forward(layer, output_1)
            outputs, grads = [branch], [grad_2]
            if routing is not None:
                moe_index -= 1
                outputs += [routing.balance_loss, routing.z_loss]
                grads += [grad_balance[moe_index], grad_z[moe_index]]
            found = torch.autograd.grad(outputs, [output_1, *parameters], grads, allow_unused=True)
            stream_2 = stream_2 - branch.detach()
            grad_1 = grad_1 + found[0]
            feed_forward_grads = found[1:]
            # Y₁ = X₁ + F(X₂): recompute F, recover X₁, and add Fᵀ·dY₁ to dX₂.
            with torch.enable_grad(), attention_rng.restored():
                input_2 = stream_2.detach().requires_grad_()
                branch = stack.attention(layer, input_2)
            found = torch.autograd.grad(branch, [input_2, *parameters], grad_1, allow_unused=True)
            stream_1 = stream_1 - branch.detach()
            grad_2 = grad_2 + found[0]
            parameter_grads[index] = [_add(a, b) for a, b in zip(feed_forward_grads, found[1:])]
        return (grad_1, grad_2, None, *(grad for grads in parameter_grads for grad in grads))


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def run_two_streams(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    padding_mask: torch.Tensor | None,
    causal: bool,
    cache: Any,
    mechanism_inputs: dict[str, Any],
    *,
    recompute: bool = True,
    keep_layer_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[Routing], list[tuple[torch.Tensor, torch.Tensor]] | None]:
    """Y₁, Y₂ after the last layer, the MoE routings, and (if asked) each layer's (Y₁, Y₂)."""
    stack = _Stack(layers, padding_mask, causal, mechanism_inputs)
    parameters = [p for group in stack.parameters for p in group]
    needs_grad = torch.is_grad_enabled() and (hidden_states.requires_grad or bool(parameters))
    if recompute and needs_grad and cache is None and not keep_layer_states:
        outputs = ReversibleStack.apply(hidden_states, hidden_states, stack, *parameters)
        num_moe = len(stack.routings)
        routings = [
            routing._replace(balance_loss=outputs[2 + i], z_loss=outputs[2 + num_moe + i])
            for i, routing in enumerate(stack.routings)
        ]
        return outputs[0], outputs[1], routings, None

    stream_1 = stream_2 = hidden_states
    routings, layer_streams = [], [] if keep_layer_states else None
    for layer in layers:
        stream_1 = stream_1 + attention_branch(layer, stream_2, padding_mask, causal, cache, mechanism_inputs)
        branch, routing = feed_forward_branch(layer, stream_1, padding_mask)
        stream_2 = stream_2 + branch
        if routing is not None:
            routings.append(routing)
        if layer_streams is not None:
            layer_streams.append((stream_1, stream_2))
    return stream_1, stream_2, routings, layer_streams
