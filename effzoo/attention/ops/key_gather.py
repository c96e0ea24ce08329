"""Gathering the keys (or values) that each query block of a layout sees, into one buffer.

:func:`gather_keys` writes each query block's keys from every :class:`~.layout.KeyBlocks` source,
then keys shared by every block (the global tokens), once into one buffer, and its backward
accumulates each piece into its source's blocks; neighbour sources are gathered by shifting,
the others by index. :func:`naive_gather_keys` reads the same keys position by position from
:meth:`~.layout.KeyBlocks.positions`, the reference the tests compare it with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .layout import KeyBlocks


class _GatheredKeys(torch.autograd.Function):
    """Each query block's keys from every source, then ``tail`` keys shared by every block, written
    once into one buffer; backward accumulates each piece into its source's blocks. Gathering the
    sources apart and concatenating them would copy every key twice each way."""

    @staticmethod
    def forward(
        ctx: Any, sources: tuple[KeyBlocks, ...], tail: torch.Tensor | None, *blocks: torch.Tensor
    ) -> torch.Tensor:
        heads, batch, _, _, dim = blocks[0].shape
        widths = [source.index.shape[-1] * source.size for source in sources]
        extra = 0 if tail is None else tail.shape[2]
        out = blocks[0].new_empty(heads, batch, sources[0].index.shape[2], sum(widths) + extra, dim)
        start = 0
        for source, source_blocks, width in zip(sources, blocks, widths, strict=True):
            source.write_keys(source_blocks, out[:, :, :, start : start + width])
            start += width
        if tail is not None:
            out[:, :, :, start:] = tail[:, :, None]
        ctx.sources, ctx.widths, ctx.has_tail = sources, widths, tail is not None
        ctx.block_shapes = [source_blocks.shape for source_blocks in blocks]
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads, start = [], 0
        for source, width, shape in zip(ctx.sources, ctx.widths, ctx.block_shapes, strict=True):
            grads.append(source.accumulate_keys(grad[:, :, :, start : start + width], shape))
            start += width
        grad_tail = grad[:, :, :, start:].sum(2) if ctx.has_tail else None
        return None, grad_tail, *grads


def gather_keys(x: torch.Tensor, sources: Sequence[KeyBlocks], tail: torch.Tensor | None = None) -> torch.Tensor:
    """(heads, batch, query_blocks, keys, dim): the keys of x (heads, batch, L, dim) that each query
    block sees, source after source in the order of their :meth:`KeyBlocks.positions`, then
    ``tail`` (heads, batch, g, dim)."""
    blocks = [source.blocks(x) for source in sources]
    if len(sources) == 1 and sources[0].offsets == (0,) and tail is None:
        return blocks[0]
    return _GatheredKeys.apply(tuple(sources), tail, *blocks)


def naive_gather_keys(
    x: torch.Tensor, sources: Sequence[KeyBlocks], tail: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference of :func:`gather_keys`: x at every source's key positions, concatenated,
    then ``tail``; plain autograd, one gather per source. Where a block does not exist it gives
    zeros, and :func:`gather_keys` whatever the masks drop (compare the existing keys only)."""
    heads, batch, _, dim = x.shape
    pieces = []
    for source in sources:
        positions = source.positions()
        positions = positions.expand(heads, batch, *positions.shape[2:])
        num_blocks, width = positions.shape[2:]
        flat = positions.clamp(min=0).reshape(heads, batch, -1, 1).expand(-1, -1, -1, dim)
        keys = x.gather(2, flat).view(heads, batch, num_blocks, width, dim)
        pieces.append(keys.masked_fill((positions < 0)[..., None], 0.0))
    if tail is not None:
        pieces.append(tail[:, :, None].expand(-1, -1, pieces[0].shape[2], -1, -1))
    return torch.cat(pieces, dim=3)
