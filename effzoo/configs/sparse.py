"""Config of the ``sparse`` variant: factorized strided / fixed patterns (Child et al. 2019)."""

from __future__ import annotations

from .base import WINDOWED_DENSE_BELOW, BlockSparseConfig


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
