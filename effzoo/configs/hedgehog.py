"""Config of the ``hedgehog`` variant: a learnable feature map that mimics softmax (Zhang et al. 2024)."""

from __future__ import annotations

from typing import ClassVar

from .base import EffzooConfig


class HedgehogConfig(EffzooConfig):
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

    hedgehog_feature_dim: int | None = None
    hybrid_window: int | None = None
    hybrid_special_tokens: bool = False
    causal_chunk_size: int = 64
