"""Block-sparse attention: the one engine behind every sparse pattern of the zoo.

Queries and gathered keys of a block layout (``layout.py``) go to
``scaled_dot_product_attention`` block by block, so memory is O(L · keys per query) and no L×L
tensor is built (below a crossover length one dense SDPA with the pattern as a boolean mask is
faster, and used instead). The engine adds causality, padding and global tokens (every query
sees the global keys; global queries see every key, one SDPA on the g global rows, or the
mechanism's own context for them). On CPU without dropout the fused, chunked flash kernel runs
(``chunked_flash.py``); in inference compiled flex attention may (``attention/flex.py``).

:func:`naive_block_sparse_attention` is the plain reference of :func:`block_sparse_attention`:
dense softmax attention under the same layout's L×L pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..flex import attend_group_flex, supports_flex
from ..reference import dense_reference_attention
from .chunked_flash import chunked_flash_attention
from .global_tokens import GlobalTokens
from .key_masks import PackedBatch, dense_pattern, key_mask, part_mask, with_empty_rows
from .layout import HeadGroup, Part, select_heads
from .permutation import reorder
from .query_blocks import part_blocks, unblock


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
    ``flex`` (inference only), compiled flex attention runs the layouts it supports (``attention/flex.py``).
    Rows of padding are not zeroed here.
    """
    batch = PackedBatch(
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
    contexts = [attend(*(select_heads(x, g.heads) for x in (q, k, v)), g, batch) for g in groups]
    context = contexts[0]
    if len(contexts) > 1:  # joined in the (batch, L, heads, dim) layout the groups write
        context = torch.cat([c.permute(1, 2, 0, 3) for c in contexts], dim=2).permute(2, 0, 1, 3)
    if batch.global_tokens is not None and not causal:
        rows = _global_rows(q, k, v, batch) if global_context is None else global_context.transpose(0, 1)
        context = batch.global_tokens.scatter(context, rows)
    return context.transpose(0, 1)


def _global_rows(q, k, v, batch: PackedBatch) -> torch.Tensor:
    """Global queries attend every real key: (heads, batch, g, dim), O(g·L)."""
    rows = batch.global_tokens.gather(q)
    real = torch.arange(k.shape[2], device=k.device) < batch.lengths[:, None]
    real = real | (batch.lengths[:, None] == 0)  # finite rows for empty sequences
    return F.scaled_dot_product_attention(rows, k, v, attn_mask=real[None, :, None, :], dropout_p=batch.dropout_p)


def _part_inputs(q, k, v, part: Part, batch: PackedBatch, with_globals: bool):
    """:func:`part_blocks` and the part's mask, flattened like them (heads or 1, batch·blocks, rows, keys)."""
    mask = part_mask(part, batch, q.shape[2], q.device, with_globals)
    return *part_blocks(q, k, v, part, batch, with_globals), mask.flatten(1, 2)


def _attend_group_blocks(q, k, v, group: HeadGroup, batch: PackedBatch) -> torch.Tensor:
    """SDPA on gathered blocks: fused and chunked on CPU without dropout (``chunked_flash.py``),
    else :func:`_attend_group_sdpa`."""
    if q.device.type == "cpu" and not batch.dropout_p:
        return chunked_flash_attention(q, k, v, group, batch)
    return _attend_group_sdpa(q, k, v, group, batch)


def _attend_group_sdpa(q, k, v, group: HeadGroup, batch: PackedBatch) -> torch.Tensor:
    """One SDPA call on the gathered blocks of a one-part group, a merged softmax for several."""
    inputs = [_part_inputs(q, k, v, part, batch, with_globals=i == 0) for i, part in enumerate(group.parts)]
    if len(inputs) > 1:
        return _merged_softmax(inputs, group.parts, batch)
    blocked_q, keys, values, mask = inputs[0]
    mask, empty = with_empty_rows(mask)
    context = F.scaled_dot_product_attention(blocked_q, keys, values, attn_mask=mask, dropout_p=batch.dropout_p)
    if empty is not None:
        context = context.masked_fill(empty, 0.0)
    return unblock(context, group.parts[0], q.shape[1])


def _attend_group_flex_or_blocks(q, k, v, group: HeadGroup, batch: PackedBatch) -> torch.Tensor:
    """Compiled flex attention on the group's block mask (``attention/flex.py``), else the block path."""
    context = attend_group_flex(q, k, v, group, batch, key_mask)
    return _attend_group_blocks(q, k, v, group, batch) if context is None else context


def _merged_softmax(inputs, parts: Sequence[Part], batch: PackedBatch) -> torch.Tensor:
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
    lse = [unblock(torch.logsumexp(s, -1, keepdim=True), p, batch_size) for s, p in zip(scores, parts, strict=True)]
    total = torch.logsumexp(torch.stack(lse), dim=0)
    context = 0
    for (_, _, values, mask), score, part in zip(inputs, scores, parts, strict=True):
        own_total = reorder(total, part.order)
        weights = torch.exp(score - own_total.reshape(*score.shape[:-1], 1)) * mask
        weights = F.dropout(weights, batch.dropout_p) if batch.dropout_p else weights
        context = context + unblock(weights @ values, part, batch_size)
    return context


def _attend_group_dense(q, k, v, group: HeadGroup, batch: PackedBatch) -> torch.Tensor:
    """One dense SDPA with the pattern as a boolean mask: faster than gathering for short inputs."""
    mask, empty = with_empty_rows(dense_pattern(group, batch, q.shape[2], q.device))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=batch.dropout_p)
    return context if empty is None else context.masked_fill(empty, 0.0)


def naive_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[HeadGroup],
    *,
    lengths: torch.Tensor,
    global_tokens: GlobalTokens | None = None,
    causal: bool = False,
    global_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference of :func:`block_sparse_attention` (same inputs, no dropout): each head group's
    L×L :func:`~.key_masks.dense_pattern`, global rows seeing every real key (bidirectional), in
    :func:`~effzoo.attention.reference.dense_reference_attention`; global rows then take
    ``global_context`` where given. Rows of padding are not zeroed, as in the fast path."""
    batch = PackedBatch(lengths=lengths.int(), global_tokens=global_tokens, causal=causal, dropout_p=0.0)
    length = q.shape[2]
    real = torch.arange(length, device=q.device) < lengths[:, None]
    contexts = []
    for group in groups:
        allowed = dense_pattern(group, batch, length, q.device).transpose(0, 1)  # (batch, heads or 1, L, L)
        if global_tokens is not None and not causal:
            allowed = torch.where(global_tokens.mask[:, None, :, None], real[:, None, None, :], allowed)
        contexts.append(dense_reference_attention(q[:, group.heads], k[:, group.heads], v[:, group.heads], allowed))
    context = torch.cat(contexts, dim=1)
    if global_context is not None and global_tokens is not None and not causal:
        row, token = global_tokens.valid.nonzero(as_tuple=True)
        context = context.clone()
        context[row, :, global_tokens.positions[row, token]] = global_context[row, :, token]
    return context
