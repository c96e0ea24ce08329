"""Config of the ``axial`` variant: attention along the rows and columns of a grid (Ho et al. 2019)."""

from __future__ import annotations

from .base import BlockSparseConfig


class AxialConfig(BlockSparseConfig):
    """The sequence is read as an ``axial_shape`` = (rows, columns) grid (padded to fit; None: the most
    square grid that holds ``max_position_embeddings``); with ``axial_heads`` "split" half the heads
    attend along rows and half along columns, with "merged" every head attends its row and column."""

    model_type = "effzoo-axial"

    axial_shape: list[int] | None = None
    axial_heads: str = "split"
