"""Config of the ``axial`` variant: attention along the rows and columns of a grid (Ho et al. 2019)."""

from __future__ import annotations

import math

from ..attention.checks import one_of, positive_int
from .base import BlockSparseConfig


def default_axial_shape(max_positions: int) -> tuple[int, int]:
    """A grid of at least ``max_positions`` cells, columns a power of two near √max_positions."""
    columns = 2 ** math.ceil(math.log2(math.sqrt(max_positions)))
    return math.ceil(max_positions / columns), columns


class AxialConfig(BlockSparseConfig):
    """The sequence is read as an ``axial_shape`` = (rows, columns) grid (padded to fit; None: the most
    square grid that holds ``max_position_embeddings``, see :attr:`grid_shape`); with ``axial_heads``
    "split" half the heads attend along rows and half along columns, with "merged" every head attends
    its row and column."""

    model_type = "effzoo-axial"

    axial_shape: list[int] | None = None
    axial_heads: str = "split"

    def check_backbone(self) -> None:
        super().check_backbone()
        checked_axial_shape(self.axial_shape)
        one_of("axial_heads", self.axial_heads, ("split", "merged"))
        if self.axial_heads == "split" and self.num_attention_heads < 2:
            raise ValueError(
                "axial attention gives half the heads to rows and half to columns, but num_attention_heads is "
                f"{self.num_attention_heads}; use two heads or more, or axial_heads='merged'."
            )

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns): ``axial_shape``, or :func:`default_axial_shape` of ``max_position_embeddings``."""
        shape = checked_axial_shape(self.axial_shape)
        return default_axial_shape(self.max_position_embeddings) if shape is None else shape


def checked_axial_shape(shape: object) -> tuple[int, int] | None:
    """``axial_shape`` as a (rows, columns) pair of positive ints (None stays None), else a ValueError."""
    if shape is None:
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) != 2:
        raise ValueError(f"axial_shape must be a pair (rows, columns), got {shape!r}; e.g. (32, 64) for 2,048 tokens.")
    fix = "Give a pair of positive ints (rows, columns) whose product covers the longest input."
    rows, columns = (positive_int("axial_shape", size, fix) for size in shape)
    return rows, columns
