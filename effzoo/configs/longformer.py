"""Config of the ``longformer`` variant: sliding window + global attention (Beltagy et al. 2020)."""

from __future__ import annotations

from .base import WINDOWED_DENSE_BELOW, BlockSparseConfig


class EffzooLongformerConfig(BlockSparseConfig):
    """Each token attends to ``attention_window``/2 tokens on each side (even; one value or one per
    layer, as Transformers' ``LongformerConfig``), spread by ``attention_dilation`` (one value or one per head);
    tokens marked in ``global_attention_mask`` attend and are attended everywhere, through their own
    ``query_global`` / ``key_global`` / ``value_global`` projections."""

    model_type = "effzoo-longformer"

    attention_window: int | list[int] = 512
    attention_dilation: int | list[int] = 1
    dense_attention_below: int = WINDOWED_DENSE_BELOW
