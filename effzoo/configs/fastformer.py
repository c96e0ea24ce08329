"""Config of the ``fastformer`` variant: additive attention (Wu et al. 2021, Fastformer)."""

from __future__ import annotations

from ..attention.fastformer import FastformerAttention
from .base import EffzooConfig


class FastformerConfig(EffzooConfig):
    """Fastformer's additive attention: the sequence is summarised into one global query and one
    global key per head, in O(L · d). It has no settings of its own beyond the backbone's.

    Bidirectional only: the global vectors sum over the whole sequence, so ``is_decoder=True`` is refused.
    """

    model_type = "effzoo-fastformer"

    def check_backbone(self) -> None:
        super().check_backbone()
        if self.is_decoder:
            raise FastformerAttention.causal_refusal("is_decoder=True (a causal model)", "Set is_decoder=False")
