"""Config of the ``axial`` variant: attention along the rows and columns of a grid (Ho et al. 2019)."""

from __future__ import annotations

from .base import BlockSparseConfig


class AxialConfig(BlockSparseConfig):
    """The sequence is read as an ``axial_shape`` = (rows, columns) grid (padded to fit; None: the most
    square grid that holds ``max_position_embeddings``); half the heads attend along rows, half
    along columns."""

    model_type = "effzoo-axial"

    axial_shape: list[int] | None = None
