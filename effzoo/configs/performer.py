"""Config of the ``performer`` variant: FAVOR+ random-feature attention (Choromanski et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

from ..attention.checks import positive_int
from .kernel import KernelConfig


class PerformerConfig(KernelConfig):
    """Performer: softmax attention estimated with positive random features (FAVOR+).

    ``kernel`` is "softmax" (positive random features, an unbiased estimate of softmax) or
    "relu" (the paper's generalised ReLU attention). ``num_random_features`` is m (more: closer
    to softmax, slower); ``orthogonal_features`` draws orthogonal directions (lower variance, the
    paper's default) rather than i.i.d. ones; ``feature_redraw_interval`` redraws them every N
    training forward calls (None: never).
    """

    model_type = "effzoo-performer"
    supported_kernels: ClassVar[tuple[str, ...]] = ("softmax", "relu")

    kernel: str = "softmax"
    num_random_features: int = 256
    orthogonal_features: bool = True
    feature_redraw_interval: int | None = None

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int(
            "num_random_features", self.num_random_features, "e.g. 256 (more features: closer to softmax, slower)."
        )
        if not isinstance(self.orthogonal_features, bool):
            raise ValueError(
                f"orthogonal_features must be True or False, got {self.orthogonal_features!r}; use a bool."
            )
        positive_int("feature_redraw_interval", self.feature_redraw_interval, "Use None to never redraw.",
                     allow_none=True)
