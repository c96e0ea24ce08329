"""Config of the ``hedgehog`` variant: a learnable feature map that mimics softmax (Zhang et al. 2024)."""

from __future__ import annotations

from typing import ClassVar

from ..attention.checks import positive_int
from .kernel import KernelConfig


class HedgehogConfig(KernelConfig):
    """Hedgehog: φ(x) = softmax([Wx + b, −(Wx + b)]) per head, W and b trained to mimic softmax.

    ``hedgehog_feature_dim`` is the width of W (None: head_dim; φ has twice as many features).
    At conversion W is the identity and b zero (see ``HedgehogFeatures``); ``effzoo distill``
    then trains them to match the teacher's attention. ``hybrid_window`` (None: off; bidirectional
    only) gives the keys in the query's block of that many tokens and its two neighbours exact
    softmax weights, kernel weights beyond (LoLCATs, Zhang et al. 2024); ``hybrid_special_tokens``
    (bidirectional only) does the same for the first and last real token, the attention sinks of a
    converted BERT ([CLS] and the final [SEP]).
    """

    model_type = "effzoo-hedgehog"
    kernel: ClassVar[str] = "hedgehog"
    supported_kernels: ClassVar[tuple[str, ...]] = ("hedgehog",)

    hedgehog_feature_dim: int | None = None
    hybrid_window: int | None = None
    hybrid_special_tokens: bool = False

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int("hedgehog_feature_dim", self.hedgehog_feature_dim, "Use None for head_dim.", allow_none=True)
        positive_int("hybrid_window", self.hybrid_window, "e.g. 32, or None for pure Hedgehog.", allow_none=True)
        if not isinstance(self.hybrid_special_tokens, bool):
            raise ValueError(
                f"hybrid_special_tokens must be True or False, got {self.hybrid_special_tokens!r}; use a bool."
            )

