"""A part's queries cut into its blocks, the keys each block sees, and the way back.

The block path attends the blocked queries of a part, (heads, batch·blocks, block_size, dim), on
the keys (or values) gathered for each block, (heads, batch·blocks, keys, dim): its sources'
keys, then the global keys for the first part of a head group.
"""

from __future__ import annotations

import torch

from .key_gather import gather_keys
from .key_masks import PackedBatch
from .layout import Part
from .permutation import reorder, restore


def part_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    part: Part,
    batch: PackedBatch,
    with_globals: bool,
    blocks: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blocked queries and the gathered keys and values of one part, or of its query blocks
    ``blocks`` only: (heads, batch·blocks, ..., dim)."""
    return (
        blocked_like(q, part, blocks),
        part_keys(k, part, batch, with_globals, blocks),
        part_keys(v, part, batch, with_globals, blocks),
    )


def part_keys(
    x: torch.Tensor, part: Part, batch: PackedBatch, with_globals: bool, blocks: slice | None = None
) -> torch.Tensor:
    """The keys (or values) x that each query block of a part sees, its sources' then the global
    ones: (heads, batch·blocks, keys, dim)."""
    tail = batch.global_tokens.gather(x) if with_globals and batch.global_tokens is not None else None
    sources = part.keys if blocks is None else tuple(source.for_query_blocks(blocks) for source in part.keys)
    return gather_keys(x, sources, tail).flatten(1, 2)


def unblock(x: torch.Tensor, part: Part, batch_size: int) -> torch.Tensor:
    """(heads, batch·blocks, block_size, ...) in the part's order -> (heads, batch, L, ...)."""
    return restore(x.reshape(x.shape[0], batch_size, -1, *x.shape[3:]), part.order)


def blocked_like(x: torch.Tensor, part: Part, blocks: slice | None = None) -> torch.Tensor:
    """x (heads, batch, L, ...) in natural order, cut into the part's query blocks (all, or
    ``blocks``): (heads, batch·blocks, block_size, ...). Undoes :func:`unblock`."""
    blocked = reorder(x, part.order).unflatten(2, (-1, part.block_size))
    return (blocked if blocks is None else blocked[:, :, blocks]).flatten(1, 2)
