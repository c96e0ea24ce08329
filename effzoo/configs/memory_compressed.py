"""Config of the ``memory_compressed`` variant: keys and values through a strided convolution
(Liu et al. 2018, *Generating Wikipedia by Summarizing Long Sequences*, §4.2.1)."""

from __future__ import annotations

from ..attention.checks import positive_int
from .compressed import CompressedConfig


class MemoryCompressedConfig(CompressedConfig):
    """Memory-compressed attention: the real keys and values are cut into windows of ``compression_rate``
    consecutive tokens and each window goes through a strided convolution (kernel = stride = rate) to one
    key and one value; queries attend those (and the exact special tokens, ``global_special_tokens``).
    Causal: a query attends its own window's keys exactly (up to itself) and the compressed earlier windows.

    - ``compression_rate``: tokens per window, 3 as in the paper. 1 is exact attention.
    """

    model_type = "effzoo-memory_compressed"

    compression_rate: int = 3

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int("compression_rate", self.compression_rate,
                     "Choose the tokens per compressed window, e.g. 3 (the paper's); 1 is exact attention.")
