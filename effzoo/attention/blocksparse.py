"""Block-sparse attention: the one engine behind every sparse pattern of the zoo.

A pattern is a *block layout*. The sequence, padded to a block multiple, is cut into query
blocks; each query block attends a list of key blocks (neighbours, strided, random), possibly
cut in another order of the positions (a residue order makes dilated windows, strides and grid
columns contiguous); a predicate on positions trims the edges (exact window, dilation), and the
engine adds causality and padding. Queries and gathered keys go to
``scaled_dot_product_attention`` block by block, so memory is O(L · keys per query) and no L×L
tensor is built (below a crossover length one dense SDPA with the pattern as a boolean mask is
faster, and used instead).

Global tokens are handled densely in O(g·L) (Longformer, Beltagy et al. 2020, §3.1; BigBird's
ITC, Zaheer et al. 2020, §2): every query sees the global keys, appended to its block's keys and
removed from the blocks so that none counts twice, and global queries see every key (one SDPA on
the g global rows, with the mechanism's own projections if it has them). Special tokens (the
first and last real token, only the first as a sink when causal) are global by default.

Positions are those of the real tokens: a padded batch is reordered real tokens first, so left,
right and middle padding give the same outputs as the sequence alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from .base import AttentionMechanism
from .checks import non_negative_int
from .flex import attend_group_flex, supports_flex
from .kv_cache import GrowingKeyValueLayer, SinkSlidingWindowLayer
from .masking import gather_positions, real_tokens_first_order, scatter_positions

#: ``allowed(query_position, key_position) -> bool``, broadcasting, on real-token positions.
Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: one scatter, O(L) (an argsort sorts, O(L log L))."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device, dtype=order.dtype)
    return inverse


class _Reorder(torch.autograd.Function):
    """``x.index_select(2, order)`` for a permutation ``order``; its backward is a gather too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order)
        return x.index_select(2, order)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (order,) = ctx.saved_tensors
        return grad.index_select(2, inverse_permutation(order)), None


def reorder(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """(..., L, dim) with its positions taken in ``order`` (a permutation; None: as is)."""
    return x if order is None else _Reorder.apply(x, order)


def restore(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The inverse of :func:`reorder`."""
    return x if order is None else _Reorder.apply(x, inverse_permutation(order))


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
        (heads, batch, query_blocks, n · size, dim), zeros where a block does not exist."""
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


def gather_keys(x: torch.Tensor, sources: Sequence[KeyBlocks], tail: torch.Tensor | None = None) -> torch.Tensor:
    """(heads, batch, query_blocks, keys, dim): the keys of x (heads, batch, L, dim) that each query
    block sees, source after source in the order of their :meth:`KeyBlocks.positions`, then
    ``tail`` (heads, batch, g, dim)."""
    blocks = [source.blocks(x) for source in sources]
    if len(sources) == 1 and sources[0].offsets == (0,) and tail is None:
        return blocks[0]
    return _GatheredKeys.apply(tuple(sources), tail, *blocks)


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


# --------------------------------------------------------------------------------------------
# Global tokens
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalTokens:
    """The global tokens of a packed batch: a (batch, L) mask and, per row, their positions."""

    mask: torch.Tensor
    positions: torch.Tensor  # (batch, g), padded with 0 where ``valid`` is False
    valid: torch.Tensor  # (batch, g)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> GlobalTokens | None:
        counts = mask.sum(-1)
        count = int(counts.max()) if mask.numel() else 0
        if count == 0:
            return None
        positions = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices[:, :count]
        valid = torch.arange(count, device=mask.device) < counts[:, None]
        return cls(mask, positions.masked_fill(~valid, 0), valid)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of head-major x (heads, batch, L, dim) at the global positions: (heads, batch, g, dim)."""
        index = self.positions[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
        return x.gather(2, index)

    def scatter(self, context: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``context`` (heads, batch, L, dim) with the global rows replaced by ``rows`` (heads, batch,
        g, dim): one copy, in the memory layout of ``context``."""
        batch_index = torch.arange(self.positions.shape[0], device=context.device)[:, None].expand_as(self.positions)
        index = (batch_index[self.valid], self.positions[self.valid])
        by_position = context.permute(1, 2, 0, 3)  # (batch, L, heads, dim)
        replaced = by_position.index_put(index, rows.permute(1, 2, 0, 3)[self.valid])
        return replaced.permute(2, 0, 1, 3)


def global_token_mask(
    lengths: torch.Tensor,
    padded_length: int,
    *,
    causal: bool,
    special_tokens: bool,
    extra: Sequence[torch.Tensor | None] = (),
) -> torch.Tensor:
    """(batch, padded_length) bool: the global tokens of a packed batch.

    Special tokens are the first real token and, unless causal, the last one; ``extra`` masks
    (the user's ``global_attention_mask``, a pattern's own global blocks) are added; padding never
    is global.
    """
    positions = torch.arange(padded_length, device=lengths.device)
    real = positions < lengths[:, None]
    mask = torch.zeros_like(real)
    if special_tokens:
        mask = mask | (positions == 0)
        if not causal:
            mask = mask | (positions == lengths[:, None] - 1)
    for other in extra:
        if other is not None:
            mask = mask | F.pad(other.to(torch.bool), (0, padded_length - other.shape[-1]))
    return mask & real


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """What every head group of one forward shares."""

    lengths: torch.Tensor  # (batch,) real tokens, first in each row
    global_tokens: GlobalTokens | None
    causal: bool
    dropout_p: float


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[HeadGroup],
    *,
    lengths: torch.Tensor,
    global_tokens: GlobalTokens | None = None,
    causal: bool = False,
    global_context: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dense: bool = False,
    flex: bool = False,
) -> torch.Tensor:
    """Attention of q, k, v (batch, heads, L, dim) under a block layout; returns (batch, heads, L, dim).

    The batch is packed (each row's ``lengths`` real tokens first) and L is the layout's padded
    length. The global rows' context is ``global_context`` (batch, heads, g, dim) when given
    (Longformer's, from its own projections), else their queries attend every key with q, k, v.
    With ``dense``, one SDPA per head group takes the pattern as an L×L boolean mask; with
    ``flex`` (inference only), compiled flex attention runs the layouts it supports (``flex.py``).
    Rows of padding are not zeroed here.
    """
    batch = _Batch(
        lengths=lengths.int(),
        global_tokens=global_tokens,
        causal=causal,
        dropout_p=dropout_p,
    )
    # Head-major (heads, batch, L, dim) views, so that a mask that does not depend on the head
    # broadcasts; not copied (each chunk of the block path copies what it reads).
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    attend = _attend_group_dense if dense else _attend_group_blocks
    if flex and not dense and supports_flex(groups):
        attend = _attend_group_flex_or_blocks
        q, k, v = (x.contiguous() for x in (q, k, v))
    contexts = [attend(*(_heads(x, g.heads) for x in (q, k, v)), g, batch) for g in groups]
    context = contexts[0]
    if len(contexts) > 1:  # joined in the (batch, L, heads, dim) layout the groups write
        context = torch.cat([c.permute(1, 2, 0, 3) for c in contexts], dim=2).permute(2, 0, 1, 3)
    if batch.global_tokens is not None and not causal:
        rows = _global_rows(q, k, v, batch) if global_context is None else global_context.transpose(0, 1)
        context = batch.global_tokens.scatter(context, rows)
    return context.transpose(0, 1)


def _heads(x: torch.Tensor, heads: slice) -> torch.Tensor:
    """x[heads], or x itself when ``heads`` covers every head (a slice's backward zero-fills a copy)."""
    return x if range(*heads.indices(x.shape[0])) == range(x.shape[0]) else x[heads]


def _global_rows(q, k, v, batch: _Batch) -> torch.Tensor:
    """Global queries attend every real key: (heads, batch, g, dim), O(g·L)."""
    rows = batch.global_tokens.gather(q)
    real = torch.arange(k.shape[2], device=k.device) < batch.lengths[:, None]
    real = real | (batch.lengths[:, None] == 0)  # finite rows for empty sequences
    return F.scaled_dot_product_attention(rows, k, v, attn_mask=real[None, :, None, :], dropout_p=batch.dropout_p)


def _key_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, batch: _Batch, allowed: Predicate | None
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


def _global_key_mask(query_positions: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """(1, batch, ..., queries, g): every query sees the global keys (causally)."""
    tokens = batch.global_tokens
    shape = (1, tokens.positions.shape[0]) + (1,) * (query_positions.dim() - 1) + (-1,)
    keep = tokens.valid.view(shape)
    if batch.causal:
        keep = keep & (tokens.positions.view(shape) <= query_positions)
    return keep


def _part_mask(part: Part, batch: _Batch, length: int, device: torch.device, with_globals: bool) -> torch.Tensor:
    """Which gathered keys each query of a part keeps: (heads or 1, batch, blocks, rows, keys), bool.

    Without causality or trimming every query of a block keeps the same keys: one row per block
    (rows = 1), which SDPA broadcasts (a 64-256x smaller mask to build and to convert).
    """
    query_positions = part.query_positions(length, device).int()
    num_blocks = query_positions.shape[0]
    per_query = batch.causal or any(source.trims for source in part.keys)
    rows = query_positions[:, :, None] if per_query else query_positions[:, :1, None]  # (blocks, rows, 1)
    masks = [
        _key_mask(rows, source.positions().int()[..., None, :], batch, source.allowed if source.trims else None)
        for source in part.keys
    ]
    if with_globals and batch.global_tokens is not None:  # appended after the sources' keys
        masks.append(_global_key_mask(rows, batch))
    mask_heads = max(m.shape[0] for m in masks)
    masks = [m.expand(mask_heads, batch.lengths.shape[0], num_blocks, rows.shape[1], -1) for m in masks]
    return masks[0] if len(masks) == 1 else torch.cat(masks, dim=-1)


def _part_blocks(q, k, v, part: Part, batch: _Batch, with_globals: bool, blocks: slice | None = None):
    """Blocked queries and the gathered keys and values of one part, or of its query blocks
    ``blocks`` only: (heads, batch·blocks, ..., dim)."""
    return (
        _blocked_like(q, part, blocks),
        _part_keys(k, part, batch, with_globals, blocks),
        _part_keys(v, part, batch, with_globals, blocks),
    )


def _part_keys(x, part: Part, batch: _Batch, with_globals: bool, blocks: slice | None = None) -> torch.Tensor:
    """The keys (or values) x that each query block of a part sees, its sources' then the global
    ones: (heads, batch·blocks, keys, dim)."""
    tail = batch.global_tokens.gather(x) if with_globals and batch.global_tokens is not None else None
    sources = part.keys if blocks is None else tuple(source.for_query_blocks(blocks) for source in part.keys)
    return gather_keys(x, sources, tail).flatten(1, 2)


def _part_inputs(q, k, v, part: Part, batch: _Batch, with_globals: bool):
    """:func:`_part_blocks` and the part's mask, flattened like them (heads or 1, batch·blocks, rows, keys)."""
    mask = _part_mask(part, batch, q.shape[2], q.device, with_globals)
    return *_part_blocks(q, k, v, part, batch, with_globals), mask.flatten(1, 2)


def _unblock(x: torch.Tensor, part: Part, batch_size: int) -> torch.Tensor:
    """(heads, batch·blocks, block_size, ...) in the part's order -> (heads, batch, L, ...)."""
    return restore(x.reshape(x.shape[0], batch_size, -1, *x.shape[3:]), part.order)


def _with_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows with no key see every key instead (finite values and gradients) and are zeroed after."""
    empty = ~mask.any(-1, keepdim=True)
    if not bool(empty.any()):
        return mask, None
    return mask | empty, empty


def _attend_group_blocks(q, k, v, group: HeadGroup, batch: _Batch) -> torch.Tensor:
    """SDPA on gathered blocks: fused and chunked on CPU without dropout (:class:`_ChunkedFlashBlocks`);
    elsewhere one SDPA call for a one-part group, a merged softmax for several."""
    if q.device.type == "cpu" and not batch.dropout_p:
        return _ChunkedFlashBlocks.apply(group, batch, q, k, v)
    inputs = [_part_inputs(q, k, v, part, batch, with_globals=i == 0) for i, part in enumerate(group.parts)]
    if len(inputs) > 1:
        return _merged_softmax(inputs, group.parts, batch)
    blocked_q, keys, values, mask = inputs[0]
    mask, empty = _with_empty_rows(mask)
    context = F.scaled_dot_product_attention(blocked_q, keys, values, attn_mask=mask, dropout_p=batch.dropout_p)
    if empty is not None:
        context = context.masked_fill(empty, 0.0)
    return _unblock(context, group.parts[0], q.shape[1])


def _attend_group_flex_or_blocks(q, k, v, group: HeadGroup, batch: _Batch) -> torch.Tensor:
    """Compiled flex attention on the group's block mask (``flex.py``), else the block path."""
    context = attend_group_flex(q, k, v, group, batch, _key_mask)
    return _attend_group_blocks(q, k, v, group, batch) if context is None else context


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as SDPA's additive one: 0 where kept, -inf where not."""
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _blocked_like(x: torch.Tensor, part: Part, blocks: slice | None = None) -> torch.Tensor:
    """x (heads, batch, L, ...) in natural order, cut into the part's query blocks (all, or
    ``blocks``): (heads, batch·blocks, block_size, ...). Undoes :func:`_unblock`."""
    blocked = reorder(x, part.order).unflatten(2, (-1, part.block_size))
    return (blocked if blocks is None else blocked[:, :, blocks]).flatten(1, 2)


#: The largest gathered key (or value) tensor of one chunk of the fused CPU path. glibc serves
#: blocks under its mmap ceiling (32 MiB) from the heap and recycles them; larger ones are fresh
#: mappings, page-faulted on every use. Measured here (2 cores, BigBird's 512 keys per block at
#: 8K tokens, forward + backward): 0.99 s gathering all 12 heads at once, 0.53 s one head at a time;
#: at 16K (33.5 MB per head) 2.6 s one head at a time, 2.0 s in two pieces of query blocks.
CHUNK_BYTES = 16 * 2**20


def _chunks(q: torch.Tensor, parts: Sequence[Part], batch: _Batch) -> tuple[list[tuple[slice, slice]], int]:
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


def _chunk_of(part: Part, heads: slice, rows: slice) -> Part:
    """The part restricted to some heads and batch rows (sources with a per-head or per-row index)."""

    def restrict(source: KeyBlocks) -> KeyBlocks:
        index = source.index
        index = index[heads] if index.shape[0] > 1 else index
        index = index[:, rows] if index.shape[1] > 1 else index
        return replace(source, index=index)

    return replace(part, keys=tuple(restrict(source) for source in part.keys))


def _batch_rows(batch: _Batch, rows: slice) -> _Batch:
    """What the batch rows ``rows`` share (their lengths and global tokens)."""
    tokens = batch.global_tokens
    if tokens is not None:
        tokens = GlobalTokens(tokens.mask[rows], tokens.positions[rows], tokens.valid[rows])
    return replace(batch, lengths=batch.lengths[rows], global_tokens=tokens)


def _chunk_mask(mask: torch.Tensor, heads: slice, rows: slice, blocks: slice | None) -> torch.Tensor:
    """A chunk's piece (``blocks``; None: all) of a (heads or 1, batch, blocks, ...) mask, flattened
    to (heads or 1, batch·blocks, ...)."""
    mask = (mask[heads] if mask.shape[0] > 1 else mask)[:, rows]
    return (mask if blocks is None else mask[:, :, blocks]).flatten(1, 2)


class _ChunkedFlashBlocks(torch.autograd.Function):
    """Exact softmax attention of a head group over the union of its parts' keys, on SDPA's fused
    CPU kernel, a chunk of heads and batch rows at a time, gathering keys again in the backward.

    Each part runs the flash kernel on its gathered blocks, which also returns its log-sum-exp;
    parts merge with weights exp(lse_p − lse). The backward runs each part's flash backward with
    the *merged* output and log-sum-exp, so the probabilities it recomputes are those of the
    union softmax: exact gradients, no scores stored. Only q, k, v, the output and the
    log-sum-exp are saved (not the gathered keys, 2 × keys-per-query × L × dim per head), and
    chunks (pieces of query blocks, when one head of one row is too large) keep every temporary
    under :data:`CHUNK_BYTES`. The gathered keys' gradients reach k and v through the gather's
    own backward (:class:`_GatheredKeys`), run per piece.
    """

    @staticmethod
    def forward(ctx: Any, group: HeadGroup, batch: _Batch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        heads, batch_size, length, dim = q.shape
        # (batch, L, heads, dim) in memory: the layer merges the heads of that layout without a copy.
        context, total = q.new_empty(batch_size, length, heads, dim).permute(2, 0, 1, 3), None
        chunks, pieces = _chunks(q, group.parts, batch)
        # Masks once for every chunk (most do not depend on the head): additive for the kernel,
        # and which rows have any key (the kernel's log-sum-exp is 0 for a row with none).
        masks = [_part_mask(part, batch, length, q.device, with_globals=i == 0) for i, part in enumerate(group.parts)]
        additive = [_additive(mask, q.dtype) for mask in masks]
        has_keys = [mask.any(-1) for mask in masks]
        for chunk_heads, rows in chunks:
            sub_batch = _batch_rows(batch, rows)
            inputs = [x[chunk_heads, rows] for x in (q, k, v)]
            outputs, lses = [], []
            for i, part in enumerate(group.parts):
                part = _chunk_of(part, chunk_heads, rows)
                out_pieces, lse_pieces = [], []
                for blocks in _piece_slices(length // part.block_size, pieces):
                    blocked_q, keys, values = _part_blocks(*inputs, part, sub_batch, with_globals=i == 0, blocks=blocks)
                    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                        blocked_q, keys, values, 0.0, False, attn_mask=_chunk_mask(additive[i], chunk_heads, rows, blocks)
                    )
                    lse = lse.masked_fill(~_chunk_mask(has_keys[i], chunk_heads, rows, blocks), float("-inf"))
                    out_pieces.append(out)
                    lse_pieces.append(lse[..., None])
                num_rows = rows.stop - rows.start
                outputs.append(_unblock(_join_pieces(out_pieces, num_rows), part, num_rows))
                lses.append(_unblock(_join_pieces(lse_pieces, num_rows), part, num_rows))
            chunk_total = lses[0] if len(lses) == 1 else torch.logsumexp(torch.stack(lses), dim=0)
            chunk_total = chunk_total.masked_fill(torch.isinf(chunk_total), 0.0)  # rows with no key: zero output
            weights = [torch.exp(lse - chunk_total).to(q.dtype) for lse in lses]
            context[chunk_heads, rows] = sum(w * out for w, out in zip(weights, outputs, strict=True))
            if total is None:  # the kernel's log-sum-exp dtype
                total = chunk_total.new_empty(heads, batch_size, length, 1)
            total[chunk_heads, rows] = chunk_total
        ctx.group, ctx.batch, ctx.chunks, ctx.pieces, ctx.additive = group, batch, chunks, pieces, additive
        ctx.save_for_backward(q, k, v, context, total)
        return context

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, context, total = ctx.saved_tensors
        length = q.shape[2]
        grad_q, grad_k, grad_v = (torch.empty_like(x) for x in (q, k, v))
        for chunk_heads, rows in ctx.chunks:
            sub_batch = _batch_rows(ctx.batch, rows)
            leaves = [x[chunk_heads, rows].detach().requires_grad_() for x in (q, k, v)]
            chunk_grads = None
            for i, part in enumerate(ctx.group.parts):
                part = _chunk_of(part, chunk_heads, rows)
                for blocks in _piece_slices(length // part.block_size, ctx.pieces):
                    with torch.enable_grad():  # the gather, to run its backward below
                        blocked_q, keys, values = _part_blocks(*leaves, part, sub_batch, with_globals=i == 0, blocks=blocks)
                    part_grad, part_context, part_total = (
                        _blocked_like(x[chunk_heads, rows], part, blocks).contiguous() for x in (grad, context, total)
                    )
                    part_grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                        part_grad, blocked_q.detach(), keys.detach(), values.detach(), part_context, part_total[..., 0],
                        0.0, False, attn_mask=_chunk_mask(ctx.additive[i], chunk_heads, rows, blocks),
                    )
                    piece_grads = torch.autograd.grad((blocked_q, keys, values), leaves, part_grads)
                    if chunk_grads is None:
                        chunk_grads = piece_grads
                    else:
                        for accumulated, piece_grad in zip(chunk_grads, piece_grads, strict=True):
                            accumulated.add_(piece_grad)
            for full, chunk_grad in zip((grad_q, grad_k, grad_v), chunk_grads, strict=True):
                full[chunk_heads, rows] = chunk_grad
        return None, None, grad_q, grad_k, grad_v


def _piece_slices(num_blocks: int, pieces: int) -> list[slice | None]:
    """``num_blocks`` query blocks cut into ``pieces`` runs of nearly equal length (none empty);
    [None] (all of them, the whole-part path) for one piece."""
    if pieces == 1:
        return [None]
    bounds = [round(i * num_blocks / pieces) for i in range(pieces + 1)]
    return [slice(low, high) for low, high in zip(bounds, bounds[1:]) if high > low]


def _join_pieces(pieces: list[torch.Tensor], num_rows: int) -> torch.Tensor:
    """Per-piece kernel results (heads, rows·piece_blocks, ...) joined along the blocks."""
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat([piece.unflatten(1, (num_rows, -1)) for piece in pieces], dim=2).flatten(1, 2)


def _merged_softmax(inputs, parts: Sequence[Part], batch: _Batch) -> torch.Tensor:
    """One softmax over the disjoint key sets of several parts (each with its own query order).

    Each part's scores give a log-sum-exp per query; their log-sum-exp normalises all parts, so
    the result is exact softmax attention over the union. Scores are materialised per part:
    O(L · keys per query) memory, as the blocks are.
    """
    batch_size = batch.lengths.shape[0]
    scores = []
    for blocked_q, keys, _, mask in inputs:
        score = blocked_q @ keys.transpose(-1, -2) / math.sqrt(blocked_q.shape[-1])
        scores.append(score.masked_fill(~mask, torch.finfo(score.dtype).min))
    lse = [_unblock(torch.logsumexp(s, -1, keepdim=True), p, batch_size) for s, p in zip(scores, parts, strict=True)]
    total = torch.logsumexp(torch.stack(lse), dim=0)
    context = 0
    for (_, _, values, mask), score, part in zip(inputs, scores, parts, strict=True):
        own_total = reorder(total, part.order)
        weights = torch.exp(score - own_total.reshape(*score.shape[:-1], 1)) * mask
        weights = F.dropout(weights, batch.dropout_p) if batch.dropout_p else weights
        context = context + _unblock(weights @ values, part, batch_size)
    return context


def dense_pattern(group: HeadGroup, batch: _Batch, padded_length: int, device: torch.device) -> torch.Tensor:
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
            allowed = allowed | (members & _key_mask(rows, columns, batch, source.allowed))
    if batch.global_tokens is not None:
        is_global = batch.global_tokens.mask[None, :, None, :]
        real = columns < batch.lengths.view(1, -1, 1, 1)
        allowed = allowed | (is_global & real & ((columns <= rows) if batch.causal else True))
    return allowed


def _attend_group_dense(q, k, v, group: HeadGroup, batch: _Batch) -> torch.Tensor:
    """One dense SDPA with the pattern as a boolean mask: faster than gathering for short inputs."""
    mask, empty = _with_empty_rows(dense_pattern(group, batch, q.shape[2], q.device))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=batch.dropout_p)
    return context if empty is None else context.masked_fill(empty, 0.0)


def block_sparse_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: Sequence[HeadGroup],
    *,
    lengths: torch.Tensor,
    global_tokens: GlobalTokens | None = None,
    causal: bool = False,
    global_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax weights of :func:`block_sparse_attention` on its attended pairs only.

    Same inputs (q, k (batch, heads, L, dim), packed, L the padded length). Returns ``indices``
    (4, n): (batch, head, query, key) positions of every attended pair of a real query, and their
    ``values`` (n,), the softmax weights (before dropout). Global rows (bidirectional) take
    ``global_weights`` (batch, heads, g, L) where given (Longformer's own projections), else their
    queries' softmax over every real key. Scores are formed a chunk of (heads, batch rows) at a
    time on the gathered blocks, so memory is O(L · keys per query), as the output's is.
    """
    batch = _Batch(lengths=lengths.int(), global_tokens=global_tokens, causal=causal, dropout_p=0.0)
    q, k = q.transpose(0, 1), k.transpose(0, 1)
    entries = [_group_weights(_heads(q, g.heads), _heads(k, g.heads), g, batch) for g in groups]
    if global_tokens is not None and not causal:
        entries.append(_global_row_weights(q, k, batch, global_weights))
    indices, values = zip(*entries, strict=True)
    return torch.cat(indices, dim=1), torch.cat(values)


def _group_weights(q, k, group: HeadGroup, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of one head group's attended pairs, global rows left out (their weights
    are :func:`_global_row_weights`'), from head-major q, k (heads, batch, L, dim)."""
    length, device = q.shape[2], q.device
    masks = [_part_mask(part, batch, length, device, with_globals=i == 0) for i, part in enumerate(group.parts)]
    keys = [_part_key_positions(part, batch, i == 0) for i, part in enumerate(group.parts)]
    kept_queries = torch.arange(length, device=device) < batch.lengths[:, None]  # (batch, L)
    if batch.global_tokens is not None and not batch.causal:
        kept_queries = kept_queries & ~batch.global_tokens.mask
    indices, values = [], []
    for chunk_heads, rows in _chunks(q, group.parts, batch)[0]:
        sub_batch, num_rows = _batch_rows(batch, rows), rows.stop - rows.start
        chunk_q, chunk_k = q[chunk_heads, rows], k[chunk_heads, rows]
        scores, chunk_masks, lses = [], [], []
        for i, part in enumerate(group.parts):
            part = _chunk_of(part, chunk_heads, rows)
            blocked_q = _blocked_like(chunk_q, part)
            score = blocked_q @ _part_keys(chunk_k, part, sub_batch, i == 0).transpose(-1, -2)
            mask = _chunk_mask(masks[i], chunk_heads, rows, None).expand_as(score)
            score = (score / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
            scores.append(score)
            chunk_masks.append(mask)
            lses.append(_unblock(torch.logsumexp(score, -1, keepdim=True), part, num_rows))
        total = lses[0] if len(lses) == 1 else torch.logsumexp(torch.stack(lses), dim=0)
        for part, score, mask, key_positions in zip(group.parts, scores, chunk_masks, keys, strict=True):
            own_total = _blocked_like(total, part)
            query_positions = part.query_positions(length, device)  # (blocks, block_size)
            num_blocks = query_positions.shape[0]
            kept = _blocked_like(kept_queries[None, rows, :, None], part)  # (1, rows·blocks, block_size, 1)
            head, row_block, query, key = (mask & kept).nonzero(as_tuple=True)
            row, block = row_block // num_blocks, row_block % num_blocks
            positions = (key_positions[chunk_heads] if key_positions.shape[0] > 1 else key_positions)[:, rows]
            key_position = positions[head if positions.shape[0] > 1 else 0, row, block, key]
            indices.append(torch.stack([
                rows.start + row, group.heads.start + chunk_heads.start + head,
                query_positions[block, query], key_position,
            ]))
            values.append((score[head, row_block, query, key] - own_total[head, row_block, query, 0]).exp())
    return torch.cat(indices, dim=1), torch.cat(values)


def _part_key_positions(part: Part, batch: _Batch, with_globals: bool) -> torch.Tensor:
    """(heads or 1, batch, blocks, keys): the position of every key :func:`_part_keys` gathers."""
    batch_size = batch.lengths.shape[0]
    positions = [source.positions() for source in part.keys]
    if with_globals and batch.global_tokens is not None:
        num_blocks = positions[0].shape[2]
        positions.append(batch.global_tokens.positions[None, :, None].expand(1, -1, num_blocks, -1))
    heads = max(p.shape[0] for p in positions)
    return torch.cat([p.expand(heads, batch_size, *p.shape[2:]) for p in positions], dim=-1)


def _global_row_weights(q, k, batch: _Batch, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the global rows: each global query over every real key, O(g·L).

    ``weights`` (batch, heads, g, L) are given by a pattern with projections of its own; else they
    are the softmax of the global queries of head-major q, k (heads, batch, L, dim).
    """
    tokens = batch.global_tokens
    real = torch.arange(k.shape[2], device=k.device) < batch.lengths[:, None]  # (batch, L)
    if weights is None:
        scores = tokens.gather(q) @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        weights = scores.masked_fill(~real[None, :, None], float("-inf")).softmax(-1).transpose(0, 1)
    kept = (tokens.valid[:, None, :, None] & real[:, None, None, :]).expand_as(weights)
    row, head, token, key = kept.nonzero(as_tuple=True)
    return torch.stack([row, head, tokens.positions[row, token], key]), weights[row, head, token, key]


# --------------------------------------------------------------------------------------------
# The mechanism base class
# --------------------------------------------------------------------------------------------


class BlockSparseAttention(AttentionMechanism):
    """Base of every sparse pattern: padding, global tokens, caches and the dense fallback.

    A subclass reads its config fields (the config holds their defaults and checks) and gives its
    layout: :meth:`padded_length`, :meth:`head_groups` and, optionally,
    :meth:`pattern_global_tokens` and :meth:`cache_window`. Config fields every pattern reads
    (``BlockSparseConfig``): ``global_special_tokens``, ``dense_attention_below`` (padded lengths
    below it run one dense SDPA with the pattern as a mask: O(L²) memory; measured on MiniLM, batch
    8 at 900 tokens, 1.7x slower and 2.2x the memory of the block path, so only for short inputs)
    and ``flex_attention_from`` (see ``flex.py``). Extra forward input:
    ``global_attention_mask`` (batch, L), 1 for global tokens (Longformer's convention).

    Attention weights (``output_attentions=True``) are ``"sparse"``: a coalesced
    ``torch.sparse_coo_tensor`` of shape (batch, heads, L, L) whose stored entries are exactly the
    (query, key) pairs the forward attended (window, random blocks as drawn in that forward, global
    rows and columns) and whose values are their softmax weights; padded queries have none. They
    are formed per chunk of the gathered blocks, never as an L×L tensor, and are the weights before
    attention dropout (in training, dropout's mask is not in them). Decoding with a cache has none.
    """

    supports_causal = True
    attention_weights_layout = "sparse"

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.global_special_tokens = bool(config.global_special_tokens)
        self.dense_attention_below = non_negative_int(
            "dense_attention_below", config.dense_attention_below, "Use 0 to always take the block-sparse path."
        )
        self.flex_attention_from = None if config.flex_attention_from is None else non_negative_int(
            "flex_attention_from", config.flex_attention_from,
            "Use None to never take the compiled flex attention path.",
        )

    # -- the layout, given by each pattern ---------------------------------------------------

    def padded_length(self, length: int) -> int:
        """The length the layout needs for ``length`` tokens (a block multiple, at least ``length``)."""
        raise NotImplementedError

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        """The layout of a packed batch with ``lengths`` real tokens, padded to ``padded_length``."""
        raise NotImplementedError

    def pattern_global_tokens(self, lengths: torch.Tensor, padded_length: int) -> torch.Tensor | None:
        """(batch, padded_length) bool tokens the pattern itself makes global (BigBird's end blocks)."""
        return None

    @classmethod
    def cache_window(cls, config: Any, layer_idx: int) -> int | None:
        """How many tokens back (the query included) causal decoding needs; None: all of them."""
        return None

    @classmethod
    def new_cache(cls, config: Any) -> Cache:
        """A sliding-window cache with attention sinks when the pattern is local, else every key in
        buffers that grow (both O(1) per new token to update)."""
        windows = [cls.cache_window(config, layer) for layer in range(config.num_hidden_layers)]
        if any(window is None for window in windows):
            return Cache(layers=[GrowingKeyValueLayer() for _ in windows])
        return Cache(layers=[SinkSlidingWindowLayer(sliding_window=window) for window in windows])

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: Any = None,
        output_attentions: bool = False,
        global_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.attend(q, k, v, padding_mask, causal, cache, global_attention_mask,
                           output_attentions=output_attentions)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
        causal: bool,
        cache: Any,
        global_attention_mask: torch.Tensor | None,
        global_attention: Callable[[torch.Tensor], torch.Tensor] | None = None,
        global_attention_weights: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The forward of every pattern: the context, and with ``output_attentions`` the sparse weights.

        ``global_attention(rows)`` gives the context of the global tokens at ``rows`` (batch, g,
        positions in the input's order), (batch, heads, g, head_dim), for a pattern whose global
        queries attend every real key in their own way (Longformer's projections), and
        ``global_attention_weights(rows)`` their weights (batch, heads, g, L) over the keys in the
        input's order. They are called only when there are global rows and the attention is
        bidirectional.
        """
        self.check_causal(causal)
        self.check_global_attention_mask(global_attention_mask, q, causal)
        if cache is not None:
            if output_attentions:
                raise ValueError(
                    f"output_attentions is not available while decoding with {type(self).__name__}; "
                    "call without a cache (past_key_values=None, use_cache=False) to get the weights."
                )
            return self._attend_with_cache(q, k, v, padding_mask, causal, cache)
        return self._attend_parallel(
            q, k, v, padding_mask, causal, global_attention_mask, global_attention,
            global_attention_weights if output_attentions else None, output_attentions,
        )

    def check_causal(self, causal: bool) -> None:
        """Refuse causal attention where the pattern is bidirectional only."""
        if causal and not self.supports_causal:
            raise ValueError(
                f"{type(self).__name__} is bidirectional only, got causal=True (config.is_decoder=True). "
                "Set is_decoder=False, or use a causal pattern (local, longformer, sparse, axial) for a causal LM."
            )

    @staticmethod
    def check_global_attention_mask(mask: torch.Tensor | None, q: torch.Tensor, causal: bool) -> None:
        if mask is None:
            return
        expected = (q.shape[0], q.shape[2])
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"global_attention_mask has shape {tuple(mask.shape)} but input_ids has {expected}: give one "
                "0/1 entry per token (1 for global attention, 0 for local), shaped like input_ids."
            )
        if causal and bool(mask.any()):
            raise ValueError(
                "global_attention_mask cannot be used with causal attention: a global token would see the "
                "future. Drop it (the first token is already an attention sink) or use a bidirectional model."
            )

    def _attend_parallel(
        self, q, k, v, padding_mask, causal, global_attention_mask, global_attention,
        global_attention_weights=None, output_attentions=False,
    ):
        batch_size, _, length, _ = q.shape
        if padding_mask is None:
            lengths = torch.full((batch_size,), length, dtype=torch.long, device=q.device)
        else:
            lengths = padding_mask.sum(-1)
        order = None  # a batch that is not right-padded is packed: real tokens first
        if padding_mask is not None and bool((padding_mask[:, 1:] & ~padding_mask[:, :-1]).any()):
            order = real_tokens_first_order(padding_mask)
            if global_attention_mask is not None:
                global_attention_mask = global_attention_mask.gather(1, order)

        padded_length = self.padded_length(length)
        global_mask = global_token_mask(
            lengths, padded_length, causal=causal, special_tokens=self.global_special_tokens,
            extra=(global_attention_mask, self.pattern_global_tokens(lengths, padded_length)),
        )

        def prepare(x: torch.Tensor) -> torch.Tensor:
            x = x if order is None else gather_positions(x, order)
            return x if padded_length == length else F.pad(x, (0, 0, 0, padded_length - length))

        global_tokens = GlobalTokens.from_mask(global_mask)
        global_context = global_rows = None
        if global_attention is not None and global_tokens is not None and not causal:
            global_rows = global_tokens.positions if order is None else order.gather(1, global_tokens.positions)
            global_context = global_attention(global_rows)
        groups = self.head_groups(padded_length, lengths, causal, q.shape[1])
        q, k, v = prepare(q), prepare(k), prepare(v)
        context = block_sparse_attention(
            q, k, v, groups,
            lengths=lengths,
            global_tokens=global_tokens,
            causal=causal,
            global_context=global_context,
            dropout_p=self.attention_dropout(q),
            dense=padded_length < self.dense_attention_below,
            flex=self._use_flex(padded_length, q, k, v),
        )
        context = context if padded_length == length else context[:, :, :length]
        if padding_mask is not None:
            real = torch.arange(length, device=q.device) < lengths[:, None]
            context = context.masked_fill(~real[:, None, :, None], 0.0)
            context = context if order is None else scatter_positions(context, order)
        if not output_attentions:
            return context
        global_weights = None
        if global_attention_weights is not None and global_rows is not None:
            global_weights = global_attention_weights(global_rows)
            if order is not None:  # keys in the packed order, as the engine's
                global_weights = global_weights.gather(-1, order[:, None, None, :].expand_as(global_weights))
            global_weights = F.pad(global_weights, (0, padded_length - length))
        indices, values = block_sparse_attention_weights(
            q, k, groups, lengths=lengths, global_tokens=global_tokens, causal=causal, global_weights=global_weights,
        )
        if order is not None:  # packed positions back to the input's
            indices = torch.stack([indices[0], indices[1], order[indices[0], indices[2]], order[indices[0], indices[3]]])
        weights = torch.sparse_coo_tensor(
            indices, values.to(q.dtype), (q.shape[0], q.shape[1], length, length), check_invariants=False
        )
        return context, weights.coalesce()

    def _use_flex(self, padded_length: int, *inputs: torch.Tensor) -> bool:
        """Inference (no gradient, no dropout) at a length from ``flex_attention_from``."""
        if self.flex_attention_from is None or padded_length < self.flex_attention_from:
            return False
        if self.training and self.dropout:
            return False
        return not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs))

    def _attend_with_cache(self, q, k, v, padding_mask, causal, cache):
        """Causal decoding: new queries against the cached keys, the pattern as a predicate."""
        if not causal:
            raise ValueError("A cache is only used for causal decoding; pass causal=True or no cache.")
        new = q.shape[2]
        past = cache.get_seq_length(self.layer_idx)
        total = past + new
        if padding_mask is None:
            real = torch.ones(q.shape[0], total, dtype=torch.bool, device=q.device)
        else:
            real = padding_mask
        first_real = real.to(torch.uint8).argmax(-1)
        sink_index = torch.where(real.any(-1) & (first_real >= past), first_real - past, -1)
        keys, values = cache.update(k, v, self.layer_idx, sink_index=sink_index)
        if past == 0:
            return self._attend_parallel(q, k, v, padding_mask, causal, None, None)

        has_sink = isinstance(cache.layers[self.layer_idx], SinkSlidingWindowLayer)
        window = keys.shape[2] - int(has_sink)
        position = real.long().cumsum(-1) - 1  # position among the real tokens
        key_position, key_real = position[:, total - window :], real[:, total - window :]
        if has_sink:
            sink_in_window = (key_real & (key_position == 0)).any(-1, keepdim=True)
            key_position = torch.cat([torch.zeros_like(key_position[:, :1]), key_position], dim=-1)
            key_real = torch.cat([real.any(-1, keepdim=True) & ~sink_in_window, key_real], dim=-1)
        query_position, query_real = position[:, past:, None], real[:, past:, None]
        key_position, key_real = key_position[:, None, :], key_real[:, None, :]
        is_sink = (key_position == 0) & self.global_special_tokens

        groups = self.head_groups(self.padded_length(total), real.sum(-1), causal, q.shape[1])
        contexts = []
        for group in groups:
            allowed = group.allowed(query_position[:, None], key_position[:, None]) | is_sink[:, None]
            allowed = allowed & key_real[:, None] & (key_position <= query_position)[:, None] & query_real[:, None]
            contexts.append(_attend_allowed_keys(q[:, group.heads], keys[:, group.heads], values[:, group.heads], allowed))
        return torch.cat(contexts, dim=1)


def _attend_allowed_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA of ``q`` on the keys ``allowed`` (batch, 1, queries, keys) lets it see; rows that see none get 0.

    When the queries of a step together need at most half of the keys (a strided or axial
    pattern decoding against a full cache: O(√L) of L), only those are gathered, so a step costs
    O(keys needed) in attention instead of O(cache); choosing them is a few integer passes.
    """
    needed = allowed.any(dim=-2)  # (batch, 1, keys)
    count = int(needed.sum(-1).max())
    if 2 * count <= k.shape[2]:
        index = torch.sort((~needed).to(torch.uint8), dim=-1, stable=True).indices[..., :count]
        k, v = gather_positions(k, index[:, 0]), gather_positions(v, index[:, 0])
        allowed = allowed.gather(-1, index[:, :, None, :].expand(-1, -1, allowed.shape[-2], -1))
    empty = ~allowed.any(-1, keepdim=True)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty)
    return context.masked_fill(empty, 0.0)
