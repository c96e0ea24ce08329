"""Random inputs of the mechanism tests: queries, keys and values, and padding masks."""

from __future__ import annotations

import torch

#: The default sequence length: not a multiple of the small block, chunk and segment sizes the tests use.
LENGTH = 19


def qkv(batch: int = 2, length: int = LENGTH, heads: int = 2, dtype: torch.dtype = torch.float32):
    """Seeded q, k, v of shape (batch, heads, length, 8)."""
    generator = torch.Generator().manual_seed(4)
    return [torch.randn(batch, heads, length, 8, generator=generator, dtype=dtype) for _ in range(3)]


def padding_mask(batch: int, length: int, padding: str | None) -> torch.Tensor | None:
    """Row r keeps length − 5r real tokens, on the left ("right" padding) or the right ("left"); None: no mask."""
    if padding is None:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    for row in range(batch):
        real = length - 5 * row
        mask[row] = torch.arange(length) < real if padding == "right" else torch.arange(length) >= length - real
    return mask
