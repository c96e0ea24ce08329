"""Config of the ``full`` variant: BERT itself, exact softmax attention on SDPA."""

from __future__ import annotations

from .base import EffzooConfig


class FullConfig(EffzooConfig):
    """Exact attention; converted from BERT it reproduces ``BertModel`` to float32 round-off."""

    model_type = "effzoo-full"
