"""Dense exact attention under an explicit boolean pattern: the reference of every mechanism.

Tests compare each sparse or approximate mechanism with this function given the same pattern
(or the exact limit of the approximation). It builds the full L×L score matrix on purpose,
so it is for tests and small inputs only.
"""

from __future__ import annotations

import math

import torch


def dense_reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact softmax attention ``softmax(q kᵀ · scale + mask) v``, computed in float64.

    ``allowed`` is a bool tensor broadcastable to (batch, heads, query_length, key_length),
    True where a query may attend to a key. Query rows with no allowed key return zeros.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    if allowed is None:
        allowed = torch.ones_like(scores, dtype=torch.bool)
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v.double()).to(q.dtype)


def padding_and_causal_pattern(
    padding_mask: torch.Tensor | None,
    query_length: int,
    key_length: int,
    causal: bool,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The (batch or 1, 1, query_length, key_length) pattern of plain attention.

    A real query sees every real key, and with ``causal`` only keys at or before its own
    position; a padded query sees nothing (its context is zero by the contract). Queries are
    the last ``query_length`` positions of the key sequence (as when decoding with a cache).
    """
    allowed = torch.ones(1, 1, query_length, key_length, dtype=torch.bool, device=device)
    if causal:
        query_positions = torch.arange(key_length - query_length, key_length, device=device)
        key_positions = torch.arange(key_length, device=device)
        allowed = allowed & (key_positions[None, :] <= query_positions[:, None])
    if padding_mask is not None:
        real = padding_mask.to(torch.bool)
        allowed = allowed & real[:, None, None, :] & real[:, None, key_length - query_length :, None]
    return allowed
