"""Reformer's axial position embeddings (Kitaev et al. 2020, Appendix A.2; Transformers' layout).

The positions 0 … n₁·n₂·… − 1 are laid out row-major on a grid ``axial_pos_shape`` = (n₁, n₂, …),
and position p's embedding is the concatenation of one learned vector per axis, taken at p's
coordinate on that axis: Σᵢ nᵢ · dᵢ parameters instead of (Πᵢ nᵢ) · hidden_size, the dᵢ
(``axial_pos_embds_dim``) summing to hidden_size. The parameters keep Transformers' names and
shapes (``position_embeddings.weights.i``: size nᵢ on axis i, 1 on the others, then dᵢ), so a
Transformers Reformer's embeddings load as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configs.base import EffzooConfig


class AxialPositionWeights(nn.ParameterList):
    """The per-axis tables; a class of their own so that ``_init_weights`` recognises them."""


class AxialPositionEmbeddings(nn.Module):
    """(batch, length) position ids -> (batch, length, hidden_size) axial position embeddings."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.shape = tuple(config.axial_pos_shape)
        weights = []
        for axis, (size, dim) in enumerate(zip(self.shape, config.axial_pos_embds_dim)):
            shape = [1] * len(self.shape) + [dim]
            shape[axis] = size
            weights.append(nn.Parameter(torch.empty(shape)))
        self.weights = AxialPositionWeights(weights)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        if int(position_ids.max()) >= math.prod(self.shape):
            raise ValueError(
                f"Position {int(position_ids.max())} is outside the axial position grid {list(self.shape)} "
                f"({math.prod(self.shape)} positions); use shorter inputs or a larger axial_pos_shape."
            )
        parts, remainder = [], position_ids
        strides = [math.prod(self.shape[axis + 1 :]) for axis in range(len(self.shape))]
        for weight, stride, size in zip(self.weights, strides, self.shape):
            coordinate = torch.div(remainder, stride, rounding_mode="floor")
            remainder = remainder - coordinate * stride
            parts.append(weight.reshape(size, weight.shape[-1])[coordinate])
        return torch.cat(parts, dim=-1)
