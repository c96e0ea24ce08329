"""Config of the ``local`` variant: blocked local attention (Parmar et al. 2018, Image Transformer)."""

from __future__ import annotations

from .base import WINDOWED_DENSE_BELOW, BlockSparseConfig


class LocalConfig(BlockSparseConfig):
    """Each block of ``block_size`` tokens attends to itself, ``num_blocks_before`` blocks back and
    ``num_blocks_after`` ahead (none ahead when causal)."""

    model_type = "effzoo-local"

    block_size: int = 256
    num_blocks_before: int = 1
    num_blocks_after: int = 1
    dense_attention_below: int = WINDOWED_DENSE_BELOW
