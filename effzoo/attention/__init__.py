"""Attention mechanisms: pure PyTorch modules behind one contract (see :mod:`.base`)."""

from .axial import AxialAttention
from .base import AttentionMechanism
from .blocksparse import BlockSparseAttention
from .full import FullAttention
from .kernel import KernelAttention, KernelAttentionCache
from .kv_cache import GrowingKeyValueLayer, SinkSlidingWindowLayer
from .local import LocalAttention
from .random_blocks import RandomBlocksAttention
from .reference import dense_reference_attention, padding_and_causal_pattern
from .sliding_window import SlidingWindowAttention
from .strided import StridedAttention

__all__ = [
    "AttentionMechanism",
    "AxialAttention",
    "BlockSparseAttention",
    "FullAttention",
    "GrowingKeyValueLayer",
    "KernelAttention",
    "KernelAttentionCache",
    "LocalAttention",
    "RandomBlocksAttention",
    "SinkSlidingWindowLayer",
    "SlidingWindowAttention",
    "StridedAttention",
    "dense_reference_attention",
    "padding_and_causal_pattern",
]
