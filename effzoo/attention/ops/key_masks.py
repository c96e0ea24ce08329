"""Which keys each query keeps: on a part's gathered blocks, and as a dense pattern.

A query keeps a key of its blocks when the key is real, not global (global keys come once, after
the blocks' keys), allowed by the source's predicate and, when causal, not after the query. The
same rule gives the block path's masks (:func:`part_mask`, one row per block where every query
of the block keeps the same keys) and the L×L pattern of the dense path and of the references
(:func:`dense_pattern`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .global_tokens import GlobalTokens
from .layout import HeadGroup, Part, Predicate


@dataclass(frozen=True)
class PackedBatch:
    """What every head group of one forward shares: a packed batch (each row's real tokens first),
    its global tokens, causality and the attention dropout."""

    lengths: torch.Tensor  # (batch,) real tokens, first in each row
    global_tokens: GlobalTokens | None
    causal: bool
    dropout_p: float


def key_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, batch: PackedBatch, allowed: Predicate | None
) -> torch.Tensor:
    """Which keys each query keeps: real, not global (those come once, as global keys), allowed, causal.

    ``query_positions`` (..., queries, 1) and ``key_positions`` (heads or 1, batch or 1, ..., 1, keys)
    broadcast to a (heads or 1, batch, ..., queries, keys) bool tensor.
    """
    lengths = batch.lengths.view(1, -1, *([1] * (key_positions.dim() - 2)))
    keep = (key_positions >= 0) & (key_positions < lengths)
    if batch.global_tokens is not None:
        batch_index = torch.arange(lengths.shape[1], device=lengths.device).view_as(lengths)
        keep = keep & ~batch.global_tokens.mask[batch_index, key_positions.clamp(min=0)]
    if allowed is not None:
        keep = keep & allowed(query_positions, key_positions)
    if batch.causal:
        keep = keep & (key_positions <= query_positions)
    return keep


def _global_key_mask(query_positions: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(1, batch, ..., queries, g): every query sees the global keys (causally)."""
    tokens = batch.global_tokens
    shape = (1, tokens.positions.shape[0]) + (1,) * (query_positions.dim() - 1) + (-1,)
    keep = tokens.valid.view(shape)
    if batch.causal:
        keep = keep & (tokens.positions.view(shape) <= query_positions)
    return keep


def part_mask(part: Part, batch: PackedBatch, length: int, device: torch.device, with_globals: bool) -> torch.Tensor:
    """Which gathered keys each query of a part keeps: (heads or 1, batch, blocks, rows, keys), bool.

    Without causality or trimming every query of a block keeps the same keys: one row per block
    (rows = 1), which SDPA broadcasts (a 64-256x smaller mask to build and to convert).
    """
    query_positions = part.query_positions(length, device).int()
    num_blocks = query_positions.shape[0]
    per_query = batch.causal or any(source.trims for source in part.keys)
    rows = query_positions[:, :, None] if per_query else query_positions[:, :1, None]  # (blocks, rows, 1)
    masks = [
        key_mask(rows, source.positions().int()[..., None, :], batch, source.allowed if source.trims else None)
        for source in part.keys
    ]
    if with_globals and batch.global_tokens is not None:  # appended after the sources' keys
        masks.append(_global_key_mask(rows, batch))
    mask_heads = max(m.shape[0] for m in masks)
    masks = [m.expand(mask_heads, batch.lengths.shape[0], num_blocks, rows.shape[1], -1) for m in masks]
    return masks[0] if len(masks) == 1 else torch.cat(masks, dim=-1)


def with_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows with no key see every key instead (finite values and gradients) and are zeroed after."""
    empty = ~mask.any(-1, keepdim=True)
    if not bool(empty.any()):
        return mask, None
    return mask | empty, empty


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as SDPA's additive one: 0 where kept, -inf where not."""
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def dense_pattern(group: HeadGroup, batch: PackedBatch, padded_length: int, device: torch.device) -> torch.Tensor:
    """The group's pattern as a (heads or 1, batch, L, L) bool mask, from the same layout."""
    positions = torch.arange(padded_length, device=device)
    rows, columns = positions.view(1, 1, -1, 1).int(), positions.view(1, 1, 1, -1).int()
    allowed = torch.zeros((), dtype=torch.bool, device=device)
    for part in group.parts:
        query_positions = part.query_positions(padded_length, device)
        block_of = torch.empty_like(positions)
        block_of[query_positions.reshape(-1)] = torch.arange(query_positions.numel(), device=device) // part.block_size
        for source in part.keys:
            key_positions = source.positions()
            members = torch.zeros(*key_positions.shape[:-1], padded_length + 1, dtype=torch.bool, device=device)
            members.scatter_(-1, key_positions.masked_fill(key_positions < 0, padded_length), True)
            members = members[..., :padded_length].index_select(2, block_of)
            allowed = allowed | (members & key_mask(rows, columns, batch, source.allowed))
    if batch.global_tokens is not None:
        is_global = batch.global_tokens.mask[None, :, None, :]
        real = columns < batch.lengths.view(1, -1, 1, 1)
        allowed = allowed | (is_global & real & ((columns <= rows) if batch.causal else True))
    return allowed
