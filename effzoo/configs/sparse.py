"""Config of the ``sparse`` variant: factorized strided / fixed patterns (Child et al. 2019)."""

from __future__ import annotations

from ..attention.checks import one_of, positive_int
from .base import WINDOWED_DENSE_BELOW, BlockSparseConfig

SPARSE_PATTERNS = ("strided", "fixed")
SPARSE_HEAD_MODES = ("split", "merged")


class SparseConfig(BlockSparseConfig):
    """``sparse_pattern`` "strided" (the previous ``stride`` positions + every ``stride``-th one) or
    "fixed" (the own block of ``stride`` + the last ``summary_size`` positions of every block);
    ``sparse_heads`` "split" gives half the heads each factor, "merged" gives every head both.
    The defaults (strided, merged) keep a converted BERT closest to its teacher (``attention/strided.py``)."""

    model_type = "effzoo-sparse"

    sparse_pattern: str = "strided"
    stride: int = 128
    summary_size: int = 8
    sparse_heads: str = "merged"
    dense_attention_below: int = WINDOWED_DENSE_BELOW

    def check_backbone(self) -> None:
        super().check_backbone()
        one_of("sparse_pattern", self.sparse_pattern, SPARSE_PATTERNS)
        one_of("sparse_heads", self.sparse_heads, SPARSE_HEAD_MODES)
        positive_int("stride", self.stride, "The paper uses 128 (about √L).")
        positive_int("summary_size", self.summary_size, "The paper uses 8 to 32.")
        if self.sparse_pattern == "fixed" and self.summary_size > self.stride:
            raise ValueError(
                f"summary_size ({self.summary_size}) must be at most stride ({self.stride}): the summary is the "
                "last summary_size positions of each block of stride positions. Lower summary_size."
            )
        if self.sparse_heads == "split" and self.num_attention_heads < 2:
            raise ValueError(
                "sparse_heads='split' gives each sub-pattern half of the heads, but num_attention_heads is "
                f"{self.num_attention_heads}; use sparse_heads='merged' or two heads or more."
            )
