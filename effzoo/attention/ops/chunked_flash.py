"""Exact softmax attention of a head group on SDPA's fused CPU kernel, chunk by chunk.

The CPU path of the engine without dropout: the flash kernel on each part's gathered blocks,
parts merged by their log-sum-exp, keys gathered again in the backward instead of stored.
"""

from __future__ import annotations

from typing import Any

import torch

from .chunking import batch_rows, chunk_mask, chunk_of, chunk_plan, piece_slices
from .key_masks import PackedBatch, additive_mask, part_mask
from .layout import HeadGroup
from .query_blocks import blocked_like, part_blocks, unblock


class _ChunkedFlashBlocks(torch.autograd.Function):
    """Exact softmax attention of a head group over the union of its parts' keys, on SDPA's fused
    CPU kernel, a chunk of heads and batch rows at a time, gathering keys again in the backward.

    Each part runs the flash kernel on its gathered blocks, which also returns its log-sum-exp;
    parts merge with weights exp(lse_p − lse). The backward runs each part's flash backward with
    the *merged* output and log-sum-exp, so the probabilities it recomputes are those of the
    union softmax: exact gradients, no scores stored. Only q, k, v, the output and the
    log-sum-exp are saved (not the gathered keys, 2 × keys-per-query × L × dim per head), and
    chunks (pieces of query blocks, when one head of one row is too large) keep every temporary
    under :data:`~.chunking.CHUNK_BYTES`. The gathered keys' gradients reach k and v through the
    gather's own backward (:func:`~.key_gather.gather_keys`), run per piece.
    """

    @staticmethod
    def forward(ctx: Any, group: HeadGroup, batch: PackedBatch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        heads, batch_size, length, dim = q.shape
        # (batch, L, heads, dim) in memory: the layer merges the heads of that layout without a copy.
        context, total = q.new_empty(batch_size, length, heads, dim).permute(2, 0, 1, 3), None
        chunks, pieces = chunk_plan(q, group.parts, batch)
        # Masks once for every chunk (most do not depend on the head): additive for the kernel,
        # and which rows have any key (the kernel's log-sum-exp is 0 for a row with none).
        masks = [part_mask(part, batch, length, q.device, with_globals=i == 0) for i, part in enumerate(group.parts)]
        additive = [additive_mask(mask, q.dtype) for mask in masks]
        has_keys = [mask.any(-1) for mask in masks]
        for chunk_heads, rows in chunks:
            sub_batch = batch_rows(batch, rows)
            inputs = [x[chunk_heads, rows] for x in (q, k, v)]
            outputs, lses = [], []
            for i, part in enumerate(group.parts):
                part = chunk_of(part, chunk_heads, rows)
                out_pieces, lse_pieces = [], []
                for blocks in piece_slices(length // part.block_size, pieces):
                    blocked_q, keys, values = part_blocks(*inputs, part, sub_batch, with_globals=i == 0, blocks=blocks)
                    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                        blocked_q, keys, values, 0.0, False, attn_mask=chunk_mask(additive[i], chunk_heads, rows, blocks)
                    )
                    lse = lse.masked_fill(~chunk_mask(has_keys[i], chunk_heads, rows, blocks), float("-inf"))
                    out_pieces.append(out)
                    lse_pieces.append(lse[..., None])
                num_rows = rows.stop - rows.start
                outputs.append(unblock(_join_pieces(out_pieces, num_rows), part, num_rows))
                lses.append(unblock(_join_pieces(lse_pieces, num_rows), part, num_rows))
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
            sub_batch = batch_rows(ctx.batch, rows)
            leaves = [x[chunk_heads, rows].detach().requires_grad_() for x in (q, k, v)]
            chunk_grads = None
            for i, part in enumerate(ctx.group.parts):
                part = chunk_of(part, chunk_heads, rows)
                for blocks in piece_slices(length // part.block_size, ctx.pieces):
                    with torch.enable_grad():  # the gather, to run its backward below
                        blocked_q, keys, values = part_blocks(*leaves, part, sub_batch, with_globals=i == 0, blocks=blocks)
                    part_grad, part_context, part_total = (
                        blocked_like(x[chunk_heads, rows], part, blocks).contiguous() for x in (grad, context, total)
                    )
                    part_grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                        part_grad, blocked_q.detach(), keys.detach(), values.detach(), part_context, part_total[..., 0],
                        0.0, False, attn_mask=chunk_mask(ctx.additive[i], chunk_heads, rows, blocks),
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


def _join_pieces(pieces: list[torch.Tensor], num_rows: int) -> torch.Tensor:
    """Per-piece kernel results (heads, rows·piece_blocks, ...) joined along the blocks."""
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat([piece.unflatten(1, (num_rows, -1)) for piece in pieces], dim=2).flatten(1, 2)


def chunked_flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: HeadGroup, batch: PackedBatch
) -> torch.Tensor:
    """Head-major (heads, batch, L, dim) context of one head group by :class:`_ChunkedFlashBlocks`."""
    return _ChunkedFlashBlocks.apply(group, batch, q, k, v)
