"""The softmax weights of block-sparse attention on its attended pairs, as sparse COO entries.

``output_attentions=True`` for a sparse pattern returns exactly the (query, key) pairs the
forward attended and their softmax weights, formed a chunk at a time on the gathered blocks,
never as an L×L tensor. :func:`naive_block_sparse_attention_weights` is the plain reference:
one dense softmax under the same layout's L×L pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .chunking import batch_rows, chunk_mask, chunk_of, chunk_plan
from .global_tokens import GlobalTokens
from .key_masks import PackedBatch, dense_pattern, part_mask
from .layout import HeadGroup, Part, select_heads
from .query_blocks import blocked_like, part_keys, unblock


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
    batch = PackedBatch(lengths=lengths.int(), global_tokens=global_tokens, causal=causal, dropout_p=0.0)
    q, k = q.transpose(0, 1), k.transpose(0, 1)
    entries = [_group_weights(select_heads(q, g.heads), select_heads(k, g.heads), g, batch) for g in groups]
    if global_tokens is not None and not causal:
        entries.append(_global_row_weights(q, k, batch, global_weights))
    indices, values = zip(*entries, strict=True)
    return torch.cat(indices, dim=1), torch.cat(values)


def _group_weights(q, k, group: HeadGroup, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of one head group's attended pairs, global rows left out (their weights
    are :func:`_global_row_weights`'), from head-major q, k (heads, batch, L, dim)."""
    length, device = q.shape[2], q.device
    masks = [part_mask(part, batch, length, device, with_globals=i == 0) for i, part in enumerate(group.parts)]
    keys = [_part_key_positions(part, batch, i == 0) for i, part in enumerate(group.parts)]
    kept_queries = torch.arange(length, device=device) < batch.lengths[:, None]  # (batch, L)
    if batch.global_tokens is not None and not batch.causal:
        kept_queries = kept_queries & ~batch.global_tokens.mask
    indices, values = [], []
    for chunk_heads, rows in chunk_plan(q, group.parts, batch)[0]:
        sub_batch, num_rows = batch_rows(batch, rows), rows.stop - rows.start
        chunk_q, chunk_k = q[chunk_heads, rows], k[chunk_heads, rows]
        scores, chunk_masks, lses = [], [], []
        for i, part in enumerate(group.parts):
            part = chunk_of(part, chunk_heads, rows)
            blocked_q = blocked_like(chunk_q, part)
            score = blocked_q @ part_keys(chunk_k, part, sub_batch, i == 0).transpose(-1, -2)
            mask = chunk_mask(masks[i], chunk_heads, rows, None).expand_as(score)
            score = (score / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
            scores.append(score)
            chunk_masks.append(mask)
            lses.append(unblock(torch.logsumexp(score, -1, keepdim=True), part, num_rows))
        total = lses[0] if len(lses) == 1 else torch.logsumexp(torch.stack(lses), dim=0)
        for part, score, mask, key_positions in zip(group.parts, scores, chunk_masks, keys, strict=True):
            own_total = blocked_like(total, part)
            query_positions = part.query_positions(length, device)  # (blocks, block_size)
            num_blocks = query_positions.shape[0]
            kept = blocked_like(kept_queries[None, rows, :, None], part)  # (1, rows·blocks, block_size, 1)
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


def _part_key_positions(part: Part, batch: PackedBatch, with_globals: bool) -> torch.Tensor:
    """(heads or 1, batch, blocks, keys): the position of every key :func:`part_keys` gathers."""
    batch_size = batch.lengths.shape[0]
    positions = [source.positions() for source in part.keys]
    if with_globals and batch.global_tokens is not None:
        num_blocks = positions[0].shape[2]
        positions.append(batch.global_tokens.positions[None, :, None].expand(1, -1, num_blocks, -1))
    heads = max(p.shape[0] for p in positions)
    return torch.cat([p.expand(heads, batch_size, *p.shape[2:]) for p in positions], dim=-1)


def _global_row_weights(q, k, batch: PackedBatch, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
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


def naive_block_sparse_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: Sequence[HeadGroup],
    *,
    lengths: torch.Tensor,
    global_tokens: GlobalTokens | None = None,
    causal: bool = False,
    global_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference of :func:`block_sparse_attention_weights` (same inputs and outputs, entries
    in (batch, head, query, key) order): one float64 softmax of the L×L scores under each head
    group's :func:`~.key_masks.dense_pattern`, global rows over every real key (bidirectional) or
    ``global_weights``; the entries are the allowed pairs of the real queries."""
    batch = PackedBatch(lengths=lengths.int(), global_tokens=global_tokens, causal=causal, dropout_p=0.0)
    batch_size, num_heads, length, dim = q.shape
    allowed = torch.cat([
        dense_pattern(group, batch, length, q.device).transpose(0, 1)
        .expand(batch_size, len(range(*group.heads.indices(num_heads))), length, length)
        for group in groups
    ], dim=1)
    real = torch.arange(length, device=q.device) < lengths[:, None]
    with_global_rows = global_tokens is not None and not causal
    if with_global_rows:
        allowed = torch.where(global_tokens.mask[:, None, :, None], real[:, None, None, :], allowed)
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(dim)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    if with_global_rows and global_weights is not None:
        row, token = global_tokens.valid.nonzero(as_tuple=True)
        weights = weights.clone()
        weights[row, :, global_tokens.positions[row, token]] = global_weights[row, :, token].double()
    kept = allowed & real[:, None, :, None]
    return kept.nonzero().t(), weights[kept].to(q.dtype)
