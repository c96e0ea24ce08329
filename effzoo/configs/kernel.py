"""Shared base of the kernel-attention configs (performer, linear, hedgehog)."""

from __future__ import annotations

from typing import ClassVar

from ..attention.checks import positive_int
from .base import EffzooConfig

#: The variant whose config holds each kernel's fields.
KERNEL_VARIANTS = {"softmax": "performer", "relu": "performer", "elu": "linear", "hedgehog": "hedgehog"}


class KernelConfig(EffzooConfig):
    """Shared fields of the kernel-attention variants, one mechanism with a swappable feature map φ.

    ``kernel`` names φ, one of the variant's ``supported_kernels`` (a field of the performer, fixed
    for the others). ``causal_chunk_size`` is the chunk length of the causal form: it sets the
    speed (64 measured best on CPU), never the result.
    """

    model_type = "effzoo-kernel"
    kernel: ClassVar[str]
    supported_kernels: ClassVar[tuple[str, ...]]

    causal_chunk_size: int = 64

    def check_backbone(self) -> None:
        super().check_backbone()
        if self.kernel not in self.supported_kernels:
            owner = KERNEL_VARIANTS.get(self.kernel)
            fix = f"use the {owner} variant for it" if owner else f"pick one of {', '.join(KERNEL_VARIANTS)}"
            raise ValueError(
                f"kernel must be one of {', '.join(map(repr, self.supported_kernels))} for {self.model_type}, "
                f"got {self.kernel!r}; {fix}."
            )
        positive_int("causal_chunk_size", self.causal_chunk_size, "e.g. 64 (the measured best on CPU).")
