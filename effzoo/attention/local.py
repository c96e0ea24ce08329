"""Blocked local attention: the Image Transformer's 1-D local attention (Parmar et al. 2018, §3.2).

The sequence is cut into blocks of ``block_size``; the queries of block b attend the keys of
blocks b - ``num_blocks_before`` … b + ``num_blocks_after`` (causal: b - ``num_blocks_before`` … b,
and no key after the query). With m = ``block_size`` and n_b, n_a the blocks before and after,
query i attends key j iff  -n_b ≤ ⌊j/m⌋ - ⌊i/m⌋ ≤ n_a.
"""

from __future__ import annotations

from typing import Any

import torch

from .blocksparse import BlockSparseAttention
from .ops.layout import HeadGroup, KeyBlocks, Part, round_up


class LocalAttention(BlockSparseAttention):
    """Query block b attends key blocks b - num_blocks_before … b + num_blocks_after; bidirectional or causal.

    Config (``LocalConfig``, which holds the defaults and checks): ``block_size``,
    ``num_blocks_before``, ``num_blocks_after`` (unused when causal), plus the engine's fields.
    Decoding keeps (num_blocks_before + 1) · block_size tokens and the sink per layer.
    """

    supports_causal = True

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.block_size = config.block_size
        self.num_blocks_before = config.num_blocks_before
        self.num_blocks_after = config.num_blocks_after

    def padded_length(self, length: int) -> int:
        return round_up(length, self.block_size)

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        after = 0 if causal else self.num_blocks_after
        keys = KeyBlocks.neighbours(
            padded_length // self.block_size, self.num_blocks_before, after, self.block_size,
            allowed=self.allowed, device=lengths.device, exact=True,
        )
        return [HeadGroup(slice(0, num_heads), (Part(self.block_size, (keys,)),))]

    def allowed(self, query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
        """-num_blocks_before ≤ ⌊j/m⌋ - ⌊i/m⌋ ≤ num_blocks_after."""
        offset = torch.div(key_position, self.block_size, rounding_mode="floor") - torch.div(
            query_position, self.block_size, rounding_mode="floor"
        )
        return (offset >= -self.num_blocks_before) & (offset <= self.num_blocks_after)

    @classmethod
    def cache_window(cls, config: Any, layer_idx: int) -> int:
        return (config.num_blocks_before + 1) * config.block_size
