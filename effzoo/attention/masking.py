"""Padding helpers shared by every mechanism: masks stay O(L), never L×L."""

from __future__ import annotations

import torch


def query_padding_mask(padding_mask: torch.Tensor | None, query_length: int) -> torch.Tensor | None:
    """The (batch, query_length) real-token mask of the queries: the last positions of the keys."""
    if padding_mask is None:
        return None
    return padding_mask[:, padding_mask.shape[-1] - query_length :]


def zero_padded_queries(context: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the context of padded query positions (the contract: padding never carries values)."""
    if padding_mask is None:
        return context
    real = query_padding_mask(padding_mask, context.shape[-2])
    return context.masked_fill(~real[:, None, :, None], 0.0)


def key_padding_attn_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """A (batch, 1, 1, key_length) bool mask for SDPA that hides padded keys.

    A sequence with no real token at all keeps every key visible, so that its (discarded)
    rows stay finite instead of NaN in both the forward and the backward.
    """
    visible = padding_mask | ~padding_mask.any(dim=-1, keepdim=True)
    return visible[:, None, None, :]


def real_tokens_first_order(padding_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence permutation that moves real tokens before padding, keeping their order.

    Causal attention among the real tokens depends only on their relative order, so a
    left- or middle-padded batch becomes right-padded and plain ``is_causal`` attention is
    exact for every real token, without an L×L mask.
    """
    return torch.sort((~padding_mask).to(torch.uint8), dim=-1, stable=True).indices


def gather_positions(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Reorder (batch, heads, length, dim) along the length by a (batch, length) index."""
    index = order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    return x.gather(2, index)


def scatter_positions(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`gather_positions` with the same ``order``."""
    index = order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    return torch.empty_like(x).scatter_(2, index, x)
