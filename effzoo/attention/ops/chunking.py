"""Cutting the work of a head group into chunks of (heads, batch rows) within a memory budget.

The fused CPU path and the attention weights gather a chunk's keys at a time, so that no
temporary exceeds :data:`CHUNK_BYTES`; a chunk of one head and one batch row that is still too
large is cut further into pieces of query blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .global_tokens import GlobalTokens
from .key_masks import PackedBatch
from .layout import KeyBlocks, Part


#: The largest gathered key (or value) tensor of one chunk of the fused CPU path. glibc serves
#: blocks under its mmap ceiling (32 MiB) from the heap and recycles them; larger ones are fresh
#: mappings, page-faulted on every use. Measured here (2 cores, BigBird's 512 keys per block at
#: 8K tokens, forward + backward): 0.99 s gathering all 12 heads at once, 0.53 s one head at a time;
#: at 16K (33.5 MB per head) 2.6 s one head at a time, 2.0 s in two pieces of query blocks.
CHUNK_BYTES = 16 * 2**20


def chunk_plan(q: torch.Tensor, parts: Sequence[Part], batch: PackedBatch) -> tuple[list[tuple[slice, slice]], int]:
    """(heads, batch rows) slices whose gathered keys stay within :data:`CHUNK_BYTES`, and in how
    many pieces of query blocks each part of a chunk is attended (more than one only when one
    head of one batch row is over the budget)."""
    heads, batch_size, length, dim = q.shape
    globals_ = 0 if batch.global_tokens is None else batch.global_tokens.positions.shape[1]
    keys = sum(
        length // part.block_size * (sum(s.index.shape[-1] * s.size for s in part.keys) + (globals_ if i == 0 else 0))
        for i, part in enumerate(parts)
    )
    row_bytes = keys * dim * q.element_size()
    return chunk_slices(heads, batch_size, max(1, CHUNK_BYTES // row_bytes)), max(1, -(-row_bytes // CHUNK_BYTES))


def chunk_slices(heads: int, batch_size: int, rows: int) -> list[tuple[slice, slice]]:
    """Cover (heads, batch) with chunks of at most ``rows`` (head, batch row) pairs: whole heads
    with the whole batch where they fit, else one head and a run of batch rows."""
    if rows >= batch_size:
        step = rows // batch_size
        return [(slice(h, min(h + step, heads)), slice(0, batch_size)) for h in range(0, heads, step)]
    return [(slice(h, h + 1), slice(b, min(b + rows, batch_size))) for h in range(heads) for b in range(0, batch_size, rows)]


def chunk_of(part: Part, heads: slice, rows: slice) -> Part:
    """The part restricted to some heads and batch rows (sources with a per-head or per-row index)."""

    def restrict(source: KeyBlocks) -> KeyBlocks:
        index = source.index
        index = index[heads] if index.shape[0] > 1 else index
        index = index[:, rows] if index.shape[1] > 1 else index
        return replace(source, index=index)

    return replace(part, keys=tuple(restrict(source) for source in part.keys))


def batch_rows(batch: PackedBatch, rows: slice) -> PackedBatch:
    """What the batch rows ``rows`` share (their lengths and global tokens)."""
    tokens = batch.global_tokens
    if tokens is not None:
        tokens = GlobalTokens(tokens.mask[rows], tokens.positions[rows], tokens.valid[rows])
    return replace(batch, lengths=batch.lengths[rows], global_tokens=tokens)


def chunk_mask(mask: torch.Tensor, heads: slice, rows: slice, blocks: slice | None) -> torch.Tensor:
    """A chunk's piece (``blocks``; None: all) of a (heads or 1, batch, blocks, ...) mask, flattened
    to (heads or 1, batch·blocks, ...)."""
    mask = (mask[heads] if mask.shape[0] > 1 else mask)[:, rows]
    return (mask if blocks is None else mask[:, :, blocks]).flatten(1, 2)


def piece_slices(num_blocks: int, pieces: int) -> list[slice | None]:
    """``num_blocks`` query blocks cut into ``pieces`` runs of nearly equal length (none empty);
    [None] (all of them, the whole-part path) for one piece."""
    if pieces == 1:
        return [None]
    bounds = [round(i * num_blocks / pieces) for i in range(pieces + 1)]
    return [slice(low, high) for low, high in zip(bounds, bounds[1:]) if high > low]
