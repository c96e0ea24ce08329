"""Config of the ``longformer`` variant: sliding window + global attention (Beltagy et al. 2020)."""

from __future__ import annotations

from typing import Any

from ..attention.checks import positive_int
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

    def check_backbone(self) -> None:
        super().check_backbone()
        for layer in range(self.num_hidden_layers):
            self.layer_window(layer)
        self.head_dilations()

    def layer_window(self, layer_idx: int) -> int:
        """The (even) ``attention_window`` of layer ``layer_idx``."""
        windows = _per_item("attention_window", self.attention_window, self.num_hidden_layers, "layer")
        window = windows[layer_idx]
        if window % 2:
            raise ValueError(
                f"attention_window must be even (it covers attention_window / 2 tokens on each side), got {window}; "
                f"use {window + 1}."
            )
        return window

    def head_dilations(self) -> list[int]:
        """The ``attention_dilation`` of every head."""
        return _per_item("attention_dilation", self.attention_dilation, self.num_attention_heads, "head")


def _per_item(name: str, value: Any, count: int, what: str) -> list[int]:
    """A positive int for each of ``count`` items: ``value`` repeated, or its list of ``count`` entries."""
    fix = f"Give a positive int, or a list with one per {what}."
    if not isinstance(value, (list, tuple)):
        return [positive_int(name, value, fix)] * count
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} entries but the model has {count} {what}s. {fix}")
    return [positive_int(name, item, fix) for item in value]
