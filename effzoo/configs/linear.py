"""Config of the ``linear`` variant: elu(x)+1 kernel attention (Katharopoulos et al. 2020)."""

from __future__ import annotations

from typing import ClassVar

from .base import EffzooConfig


class LinearConfig(EffzooConfig):
    """Linear Transformer: φ(x) = elu(x) + 1, deterministic; no parameters of its own.

    ``causal_chunk_size`` only sets the speed of the causal form, never its result.
    """

    model_type = "effzoo-linear"
    kernel: ClassVar[str] = "elu"

    causal_chunk_size: int = 64
