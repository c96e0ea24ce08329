"""Config of the ``local`` variant: blocked local attention (Parmar et al. 2018, Image Transformer)."""

from __future__ import annotations

from ..attention.checks import non_negative_int, positive_int
from .base import WINDOWED_DENSE_BELOW, BlockSparseConfig


class LocalConfig(BlockSparseConfig):
    """Each block of ``block_size`` tokens attends to itself, ``num_blocks_before`` blocks back and
    ``num_blocks_after`` ahead (none ahead when causal)."""

    model_type = "effzoo-local"

    block_size: int = 256
    num_blocks_before: int = 1
    num_blocks_after: int = 1
    dense_attention_below: int = WINDOWED_DENSE_BELOW

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int("block_size", self.block_size, "Choose the block length in tokens, e.g. 256.")
        non_negative_int("num_blocks_before", self.num_blocks_before, "Give how many blocks back a block sees.")
        non_negative_int("num_blocks_after", self.num_blocks_after, "Give how many blocks ahead a block sees.")
