"""Block layouts: which key blocks each query block of a sparse pattern attends.

A pattern is a *block layout*. The sequence, padded to a block multiple, is cut into query
blocks; each query block attends a list of key blocks (neighbours, strided, random), possibly
cut in another order of the positions (a residue order makes dilated windows, strides and grid
columns contiguous); a predicate on positions trims the edges (exact window, dilation). A
:class:`KeyBlocks` is one source of keys, a :class:`Part` the query blocks that attend some
sources, a :class:`HeadGroup` the heads that attend the union of some parts. The engine
(``block_attention.py``) adds causality, padding and global tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .permutation import reorder

#: ``allowed(query_position, key_position) -> bool``, broadcasting, on real-token positions.
Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _shift_ranges(num_blocks: int, offsets: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """For each offset, the query blocks [low, high) whose block b + offset exists, and the offset."""
    return [(max(0, -offset), max(max(0, -offset), num_blocks - max(0, offset)), offset) for offset in offsets]


@dataclass(frozen=True)
class KeyBlocks:
    """One source of keys: blocks of ``size`` consecutive entries of ``order`` (identity if None).

    ``index`` is a long tensor (heads or 1, batch or 1, query_blocks, n): the key blocks each query
    block sees, -1 for none; its valid entries are distinct. ``allowed`` keeps a subset of their
    keys; for a causal pattern it must be the source's whole definition, since decoding with a
    cache evaluates it alone. ``exact`` says that the blocks hold exactly the keys ``allowed``
    keeps (blocked local attention, a grid row): the block path then skips the predicate, and
    without causality its mask depends on the key only, one row per block instead of one per
    query. ``offsets``, set by :meth:`neighbours`, says that block b sees blocks b + offset: those
    are gathered by shifting, with no index.
    """

    index: torch.Tensor
    size: int
    order: torch.Tensor | None = None
    allowed: Predicate | None = None
    offsets: tuple[int, ...] | None = None
    exact: bool = False

    @classmethod
    def neighbours(
        cls,
        num_blocks: int,
        before: int,
        after: int,
        size: int,
        order: torch.Tensor | None = None,
        allowed: Predicate | None = None,
        device: torch.device | None = None,
        exact: bool = False,
    ) -> KeyBlocks:
        """Blocks b - before … b + after for each of ``num_blocks`` query blocks b."""
        offsets = tuple(range(-before, after + 1))
        index = torch.arange(num_blocks, device=device)[:, None] + torch.tensor(offsets, device=device)
        index = index.masked_fill((index < 0) | (index >= num_blocks), -1)[None, None]
        return cls(index, size, order, allowed, offsets, exact)

    @property
    def trims(self) -> bool:
        """Whether the block path must evaluate ``allowed`` (it cuts keys out of the blocks)."""
        return self.allowed is not None and not self.exact

    def positions(self) -> torch.Tensor:
        """(heads or 1, batch or 1, query_blocks, n · size) key positions, -1 where none."""
        slots = self.index[..., None] * self.size + torch.arange(self.size, device=self.index.device)
        slots = slots.flatten(-2)
        positions = slots.clamp(min=0) if self.order is None else self.order[slots.clamp(min=0)]
        return positions.masked_fill(slots < 0, -1)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x (heads, batch, L, dim) in the source's order, cut into blocks: (heads, batch, L / size, size, dim)."""
        heads, batch, length, dim = x.shape
        return reorder(x, self.order).reshape(heads, batch, length // self.size, self.size, dim)

    def write_keys(self, blocks: torch.Tensor, out: torch.Tensor) -> None:
        """Write the keys each query block sees, in the order of :meth:`positions`, into ``out``
        (heads, batch, query_blocks, n · size, dim). Where a block does not exist the keys are
        zeros (shifted) or block 0's (indexed): the masks drop them."""
        heads, batch, num_blocks, size, dim = blocks.shape
        if self.offsets is not None:
            for piece, (low, high, offset) in enumerate(_shift_ranges(num_blocks, self.offsets)):
                keys = out[:, :, :, piece * size : (piece + 1) * size]
                keys[:, :, low:high] = blocks[:, :, low + offset : high + offset]
                keys[:, :, :low] = 0
                keys[:, :, high:] = 0
            return
        index = self._flat_index(heads, batch, num_blocks)
        out.copy_(blocks.reshape(-1, size * dim).index_select(0, index.reshape(-1)).view_as(out))

    def accumulate_keys(self, grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The gradient of :meth:`write_keys` for its blocks (of ``shape``), from the keys' ``grad``."""
        heads, batch, num_blocks, size, dim = shape
        grad_blocks = grad.new_zeros(shape)
        if self.offsets is not None:
            for piece, (low, high, offset) in enumerate(_shift_ranges(num_blocks, self.offsets)):
                keys = grad[:, :, low:high, piece * size : (piece + 1) * size]
                grad_blocks[:, :, low + offset : high + offset] += keys
            return grad_blocks
        index = self._flat_index(heads, batch, num_blocks).reshape(-1)
        grad_blocks.view(-1, size * dim).index_add_(0, index, grad.reshape(index.numel(), size * dim))
        return grad_blocks

    def for_query_blocks(self, blocks: slice) -> KeyBlocks:
        """The source for the query blocks ``blocks`` only (gathered by index, not by shifting)."""
        return replace(self, index=self.index[:, :, blocks], offsets=None)

    def _flat_index(self, heads: int, batch: int, num_blocks: int) -> torch.Tensor:
        """``index`` into blocks flattened over (heads, batch, blocks); -1 entries read block 0 (masked)."""
        base = torch.arange(heads * batch, device=self.index.device).view(heads, batch, 1, 1) * num_blocks
        return (base + self.index.clamp(min=0)).expand(heads, batch, *self.index.shape[2:])


@dataclass(frozen=True)
class Part:
    """Queries cut into blocks of ``block_size`` entries of ``order``, each attending ``keys``.

    The sources of a part must not share a key (their predicates make them disjoint); several
    parts of one head group are merged into one softmax (a union of differently ordered layouts).
    """

    block_size: int
    keys: tuple[KeyBlocks, ...]
    order: torch.Tensor | None = None

    def query_positions(self, padded_length: int, device: torch.device) -> torch.Tensor:
        """(query_blocks, block_size) positions of the queries of each block."""
        order = torch.arange(padded_length, device=device) if self.order is None else self.order
        return order.view(-1, self.block_size)


@dataclass(frozen=True)
class HeadGroup:
    """The heads ``heads`` attend the union of ``parts``."""

    heads: slice
    parts: tuple[Part, ...]

    def allowed(self, query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
        """The group's pattern as one predicate, the union of its sources' (decoding uses it)."""
        allowed = torch.zeros((), dtype=torch.bool, device=query_position.device)
        for part in self.parts:
            for source in part.keys:
                if source.allowed is None:
                    raise ValueError("decoding needs every key source to define `allowed`")
                allowed = allowed | source.allowed(query_position, key_position)
        return allowed


def select_heads(x: torch.Tensor, heads: slice) -> torch.Tensor:
    """x[heads], or x itself when ``heads`` covers every head (a slice's backward zero-fills a copy)."""
    return x if range(*heads.indices(x.shape[0])) == range(x.shape[0]) else x[heads]


def round_up(length: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``length`` (and at least one block)."""
    return max(1, math.ceil(length / multiple)) * multiple


def residue_order(length: int, modulus: int, device: torch.device) -> torch.Tensor:
    """Positions sorted by (position mod ``modulus``, position): each residue class contiguous.

    Positions i and i ± modulus become neighbours, so a dilated window, a stride or a grid column
    is a contiguous run of blocks.
    """
    rows = math.ceil(length / modulus)
    grid = torch.arange(rows * modulus, device=device).view(rows, modulus).t().reshape(-1)
    return grid[grid < length]


def head_runs(values: Sequence[int]) -> list[tuple[slice, int]]:
    """Consecutive heads with equal values, as (heads, value) runs: one head group each."""
    runs: list[tuple[slice, int]] = []
    start = 0
    for head in range(1, len(values) + 1):
        if head == len(values) or values[head] != values[start]:
            runs.append((slice(start, head), values[start]))
            start = head
    return runs
