"""Axial attention over a 1-D sequence (Ho et al. 2019, §3).

The sequence is laid out row by row on a grid of ``axial_shape`` = (rows, columns) cells (padded
to fit). With ``axial_heads="split"`` (the default) the first half of the heads attend along
their row, {j : ⌊j/C⌋ = ⌊i/C⌋}, the others along their column, {j : j ≡ i mod C}, with C the
number of columns: half the heads each, so a BERT checkpoint's projections still fit. With
``"merged"`` every head attends its row and its column in one softmax (two layouts in different
position orders, merged exactly by the engine). Causal (j ≤ i) or bidirectional. Memory is
O(L · (rows + columns)).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .blocksparse import BlockSparseAttention
from .ops.layout import HeadGroup, KeyBlocks, Part, residue_order, round_up


class AxialAttention(BlockSparseAttention):
    """Half the heads along the rows of an ``axial_shape`` grid, half along its columns.

    Config (``AxialConfig``, which holds the defaults and checks): its ``grid_shape`` ((rows,
    columns), from ``axial_shape`` or ``max_position_embeddings``), ``axial_heads`` ("split", which
    needs two heads or more, or "merged"), plus the engine's fields.
    Extra forward input: ``global_attention_mask``. Decoding keeps every token (a column reaches
    back to the start).
    """

    supports_causal = True

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.rows, self.columns = config.grid_shape
        self.merged = config.axial_heads == "merged"

    def padded_length(self, length: int) -> int:
        if length > self.rows * self.columns:
            raise ValueError(
                f"axial_shape {(self.rows, self.columns)} holds {self.rows * self.columns} tokens but the input has "
                f"{length}: choose an axial_shape whose product is at least {length}, e.g. "
                f"{(math.ceil(length / self.columns), self.columns)}."
            )
        return round_up(length, self.columns)

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        device = lengths.device
        rows_used = padded_length // self.columns
        order = residue_order(padded_length, self.columns, device)  # columns become contiguous
        column = KeyBlocks.neighbours(self.columns, 0, 0, rows_used, order, self.same_column, device, exact=True)
        if self.merged:  # the query is in its row and its column: the row part leaves it to the column
            # (the row part's mask then has one row per query: L × columns, linear in L at a fixed width)
            row = KeyBlocks.neighbours(rows_used, 0, 0, self.columns, allowed=self.same_row_other_cell, device=device)
            return [HeadGroup(slice(0, num_heads), (Part(self.columns, (row,)), Part(rows_used, (column,), order)))]
        row = KeyBlocks.neighbours(rows_used, 0, 0, self.columns, allowed=self.same_row, device=device, exact=True)
        half = (num_heads + 1) // 2
        return [
            HeadGroup(slice(0, half), (Part(self.columns, (row,)),)),
            HeadGroup(slice(half, num_heads), (Part(rows_used, (column,), order),)),
        ]

    def same_row(self, query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
        """⌊j/C⌋ = ⌊i/C⌋."""
        return torch.div(query_position, self.columns, rounding_mode="floor") == torch.div(
            key_position, self.columns, rounding_mode="floor"
        )

    def same_column(self, query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
        """j ≡ i mod C."""
        return (query_position - key_position) % self.columns == 0

    def same_row_other_cell(self, query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
        """⌊j/C⌋ = ⌊i/C⌋ and j ≠ i: the row without the cell the column part already has."""
        return self.same_row(query_position, key_position) & (query_position != key_position)
