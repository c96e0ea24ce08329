"""Config of the ``nystrom`` variant: Nyström-approximated softmax attention (Xiong et al. 2021, Nyströmformer)."""

from __future__ import annotations

from ..attention.nystrom import NystromAttention
from ..attention.checks import positive_int
from .compressed import CompressedConfig


class NystromConfig(CompressedConfig):
    """Nyström attention: softmax(QKᵀ/√d) ≈ kernel1 · pinv(kernel2) · kernel3 through landmarks, the
    means of contiguous segments of each sequence's real tokens.

    - ``num_landmarks``: landmarks per sequence (the paper's and Transformers' default, 64). A
      sequence with at most this many (compressed) real tokens makes every token its own landmark
      and gets exact attention; any length works, padding never becomes a landmark.
    - ``pinv_iterations``: iterations of the paper's Moore–Penrose approximation of pinv(kernel2)
      (Xiong et al. 2021, eq. 16; 6 in the paper and in Transformers' Nyströmformer).
    - ``conv_kernel_size``: length of the per-head depthwise convolution over the values added to the
      output (the paper's skip connection; Transformers' Nyströmformer uses 65). None: off. Odd,
      so that the output keeps the input's length.
    - ``global_special_tokens`` (from :class:`CompressedConfig`): the first and last real token are
      exact keys beside the landmarks, under one softmax with them (see ``attention/nystrom.py``).
    """

    model_type = "effzoo-nystrom"

    num_landmarks: int = 64
    pinv_iterations: int = 6
    conv_kernel_size: int | None = None

    def check_backbone(self) -> None:
        super().check_backbone()
        if self.is_decoder:
            raise NystromAttention.causal_refusal("is_decoder=True (a causal model)", "Set is_decoder=False")
        positive_int("num_landmarks", self.num_landmarks, "e.g. num_landmarks=64 (the paper's).")
        positive_int("pinv_iterations", self.pinv_iterations, "e.g. pinv_iterations=6 (the paper's).")
        positive_int("conv_kernel_size", self.conv_kernel_size, "e.g. conv_kernel_size=65 (Transformers' "
                     "Nyströmformer), or None for no convolution.", allow_none=True)
        if self.conv_kernel_size is not None and self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"conv_kernel_size must be odd (a centred window keeps the sequence length), got "
                f"{self.conv_kernel_size}; e.g. conv_kernel_size={self.conv_kernel_size + 1}, or None for no "
                "convolution."
            )
