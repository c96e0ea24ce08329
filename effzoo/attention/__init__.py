"""Attention mechanisms: pure PyTorch modules behind one contract (see :mod:`.base`)."""

from .base import AttentionMechanism
from .full import FullAttention
from .reference import dense_reference_attention, padding_and_causal_pattern

__all__ = ["AttentionMechanism", "FullAttention", "dense_reference_attention", "padding_and_causal_pattern"]
