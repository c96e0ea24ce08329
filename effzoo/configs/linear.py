"""Config of the ``linear`` variant: elu(x)+1 kernel attention (Katharopoulos et al. 2020)."""

from __future__ import annotations

from typing import ClassVar

from .kernel import KernelConfig


class LinearConfig(KernelConfig):
    """Linear Transformer: φ(x) = elu(x) + 1, deterministic; no parameters of its own."""

    model_type = "effzoo-linear"
    kernel: ClassVar[str] = "elu"
    supported_kernels: ClassVar[tuple[str, ...]] = ("elu",)
