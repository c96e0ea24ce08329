"""Global tokens: the tokens every query sees and whose queries see every key.

Global tokens are handled densely in O(g·L) (Longformer, Beltagy et al. 2020, §3.1; BigBird's
ITC, Zaheer et al. 2020, §2): every query sees the global keys, appended to its block's keys and
removed from the blocks so that none counts twice, and global queries see every key. Special
tokens (the first and last real token, only the first as a sink when causal) are global by
default. This module finds them in a packed batch and moves their rows in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GlobalTokens:
    """The global tokens of a packed batch: a (batch, L) mask and, per row, their positions."""

    mask: torch.Tensor
    positions: torch.Tensor  # (batch, g), padded with 0 where ``valid`` is False
    valid: torch.Tensor  # (batch, g)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> GlobalTokens | None:
        counts = mask.sum(-1)
        count = int(counts.max()) if mask.numel() else 0
        if count == 0:
            return None
        positions = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices[:, :count]
        valid = torch.arange(count, device=mask.device) < counts[:, None]
        return cls(mask, positions.masked_fill(~valid, 0), valid)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of head-major x (heads, batch, L, dim) at the global positions: (heads, batch, g, dim)."""
        index = self.positions[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
        return x.gather(2, index)

    def scatter(self, context: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``context`` (heads, batch, L, dim) with the global rows replaced by ``rows`` (heads, batch,
        g, dim): one copy, in the memory layout of ``context``."""
        batch_index = torch.arange(self.positions.shape[0], device=context.device)[:, None].expand_as(self.positions)
        index = (batch_index[self.valid], self.positions[self.valid])
        by_position = context.permute(1, 2, 0, 3)  # (batch, L, heads, dim)
        replaced = by_position.index_put(index, rows.permute(1, 2, 0, 3)[self.valid])
        return replaced.permute(2, 0, 1, 3)


def global_token_mask(
    lengths: torch.Tensor,
    padded_length: int,
    *,
    causal: bool,
    special_tokens: bool,
    extra: Sequence[torch.Tensor | None] = (),
) -> torch.Tensor:
    """(batch, padded_length) bool: the global tokens of a packed batch.

    Special tokens are the first real token and, unless causal, the last one; ``extra`` masks
    (the user's ``global_attention_mask``, a pattern's own global blocks) are added; padding never
    is global.
    """
    positions = torch.arange(padded_length, device=lengths.device)
    real = positions < lengths[:, None]
    mask = torch.zeros_like(real)
    if special_tokens:
        mask = mask | (positions == 0)
        if not causal:
            mask = mask | (positions == lengths[:, None] - 1)
    for other in extra:
        if other is not None:
            mask = mask | F.pad(other.to(torch.bool), (0, padded_length - other.shape[-1]))
    return mask & real
