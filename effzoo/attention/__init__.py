"""Attention mechanisms: pure PyTorch modules behind one contract (see :mod:`.base`)."""

from .base import AttentionMechanism
from .full import FullAttention
from .kernel import KernelAttention, KernelAttentionCache
from .reference import dense_reference_attention, padding_and_causal_pattern

__all__ = [
    "AttentionMechanism",
    "FullAttention",
    "KernelAttention",
    "KernelAttentionCache",
    "dense_reference_attention",
    "padding_and_causal_pattern",
]
