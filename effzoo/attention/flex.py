"""Compiled FlexAttention on a block layout: the sparse engine's inference path.

``torch.nn.attention.flex_attention`` compiled with a ``BlockMask`` skips the key blocks a query
block does not see and evaluates the pattern (a ``mask_mod``) only inside the blocks it sees
partly, without gathering keys. On CPU (torch 2.13) it has no backward, so it serves inference
only (no gradient, no dropout); training takes the block-gather path of ``ops/block_attention.py``.
Both compute the same pattern from the same layout, so their outputs agree to round-off.

The ``BlockMask`` is built from the layout's block lists (``BlockMask.from_kv_blocks``), never
from an L×L evaluation: per query block, the listed key blocks (full where every listed pair is
allowed, partial otherwise) plus the blocks holding global keys. Global *queries* are not
computed here: the engine overwrites their rows with its O(g·L) global attention, as on the
block path. Layouts whose positions are permuted (dilation, strides, grid columns) or merge
several parts keep the block-gather path.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The config field ``flex_attention_from``: padded lengths from it use compiled flex attention in
# inference; None: never. Off by default: on CPU (torch 2.13, one BERT-base layer, forward,
# batch 1, 4K-16K tokens) flex was 1.4-1.5x faster than block-gather for BigBird's layout (whose
# config turns it on from 4,096 tokens) but 1.4-2.1x slower for the local and sliding windows,
# and each new length costs a compile of about 10 s.


@functools.cache
def _compiled_flex_attention() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def supports_flex(groups: list[Any]) -> bool:
    """Whether flex can run this layout: one part per head group, positions in order, one block size."""
    for group in groups:
        if len(group.parts) != 1:
            return False
        part = group.parts[0]
        if part.order is not None or any(s.order is not None or s.size != part.block_size for s in part.keys):
            return False
    return True


def _index(table: torch.Tensor, h: torch.Tensor, b: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """``table[h, b, *rest]`` where a dimension of size 1 broadcasts over heads or batch."""
    return table[(h if table.shape[0] > 1 else 0, b if table.shape[1] > 1 else 0, *rest)]


def _block_lists(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) of the True blocks of (…, q_blocks, k_blocks) ``flags``, listed first."""
    indices = torch.argsort((~flags).to(torch.uint8), dim=-1, stable=True)
    return flags.sum(-1).to(torch.int32), indices.to(torch.int32)


def layout_block_mask(group: Any, batch: Any, padded_length: int, key_mask: Any) -> Any:
    """The ``BlockMask`` of one head group's (single-part, unpermuted) layout on a packed batch.

    ``key_mask(rows, key_positions, batch, allowed)`` is the block path's mask of kept keys; a
    listed block is *full* when it keeps every pair, which lets flex skip the ``mask_mod`` there.
    """
    from torch.nn.attention.flex_attention import BlockMask

    part = group.parts[0]
    size = part.block_size
    num_blocks = padded_length // size
    batch_size = batch.lengths.shape[0]
    device = batch.lengths.device
    rows = part.query_positions(padded_length, device).int()[:, :, None]

    listed_tables, full, listed_any = [], None, None
    for source in part.keys:
        index = source.index  # (H or 1, B or 1, q_blocks, n)
        keep = key_mask(rows, source.positions().int()[..., None, :], batch, source.allowed)
        keep = keep.unflatten(-1, (index.shape[-1], size))  # (H|1, B, q_blocks, size, n, size)
        whole = keep.all(-1).all(-2) & (index >= 0)
        table = _scatter_blocks(index >= 0, index, num_blocks)
        full_table = _scatter_blocks(whole, index.expand_as(whole), num_blocks)
        listed_tables.append((table, source.allowed))
        full = full_table if full is None else full | full_table
        listed_any = table if listed_any is None else listed_any | table
    seen = listed_any.expand(-1, batch_size, -1, -1)
    if batch.global_tokens is not None:  # every query block also visits the blocks holding global keys
        global_blocks = batch.global_tokens.mask.view(batch_size, num_blocks, size).any(-1)
        seen = seen | global_blocks[None, :, None, :]
    full = full.expand_as(seen)
    # BlockMask wants (batch, heads, ...): the tables are head-major like the engine.
    kv_count, kv_index = _block_lists((seen & ~full).transpose(0, 1))
    full_count, full_index = _block_lists(full.transpose(0, 1))

    lengths = batch.lengths
    is_global = batch.global_tokens.mask if batch.global_tokens is not None else None
    causal = batch.causal

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        query_block, key_block = q // size, kv // size
        keep = torch.zeros_like(q, dtype=torch.bool)
        for table, allowed in listed_tables:
            listed = _index(table, h, b, query_block, key_block)
            keep = keep | (listed & allowed(q, kv) if allowed is not None else listed)
        if is_global is not None:
            keep = keep | is_global[b, kv]
        keep = keep & (kv < lengths[b])
        return keep & (kv <= q) if causal else keep

    return BlockMask.from_kv_blocks(
        kv_count, kv_index, full_count, full_index, BLOCK_SIZE=size, mask_mod=mask_mod,
        seq_lengths=(padded_length, padded_length),
    )


def _scatter_blocks(flags: torch.Tensor, index: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """(…, q_blocks, num_blocks) bool: True at the key blocks ``index`` (…, q_blocks, n) where ``flags``."""
    target = index.masked_fill(~flags | (index < 0), num_blocks).long()
    table = torch.zeros(*target.shape[:-1], num_blocks + 1, dtype=torch.bool, device=index.device)
    return table.scatter(-1, target, True)[..., :num_blocks]


def attend_group_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: Any, batch: Any,
                      key_mask: Any) -> torch.Tensor | None:
    """Head-major (heads, batch, L, dim) context of one head group by compiled flex attention, or
    None where flex cannot run here (the caller then takes the block path)."""
    try:
        block_mask = layout_block_mask(group, batch, q.shape[2], key_mask)
        context = _compiled_flex_attention()(
            *(x.transpose(0, 1).contiguous() for x in (q, k, v)), block_mask=block_mask
        )
    except Exception as error:  # noqa: BLE001 - no compiler, unsupported device: the block path still works
        logger.warning_once(f"Compiled flex attention is unavailable ({type(error).__name__}: {error}); "
                            "using block-gather attention instead.")
        return None
    return context.transpose(0, 1)
