"""Config of the ``performer`` variant: FAVOR+ random-feature attention (Choromanski et al. 2021)."""

from __future__ import annotations

from .base import EffzooConfig


class PerformerConfig(EffzooConfig):
    """Performer: softmax attention estimated with positive random features (FAVOR+).

    ``kernel`` is "softmax" (positive random features, an unbiased estimate of softmax) or
    "relu" (the paper's generalised ReLU attention). ``num_random_features`` is m;
    ``orthogonal_features`` draws orthogonal directions (lower variance, the paper's default);
    ``feature_redraw_interval`` redraws them every N training steps (None: never).
    ``causal_chunk_size`` only sets the speed of the causal form, never its result.
    """

    model_type = "effzoo-performer"

    kernel: str = "softmax"
    num_random_features: int = 256
    orthogonal_features: bool = True
    feature_redraw_interval: int | None = None
    causal_chunk_size: int = 64
