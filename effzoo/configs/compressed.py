"""Shared fields of the variants that compress the keys (Linformer, memory-compressed attention,
Nyström, inducing points); Fastformer's queries attend no keys, so it has none of them."""

from __future__ import annotations

from .base import EffzooConfig


class CompressedConfig(EffzooConfig):
    """``global_special_tokens``: the keys of the first and last real token of each sequence ([CLS]
    and the final [SEP] of a converted BERT, the attention sinks its heads lean on) stay exact,
    beside the compressed keys and out of them (in causal mode only the first). Measured on
    all-MiniLM-L6-v2 with Linformer's mean pooling over 128 segments at about 410 tokens: sentence
    cosine 0.68 without, 0.83 with."""

    model_type = "effzoo-compressed"

    global_special_tokens: bool = True

    def check_backbone(self) -> None:
        super().check_backbone()
        if not isinstance(self.global_special_tokens, bool):
            raise ValueError(f"global_special_tokens must be True or False, got {self.global_special_tokens!r}.")
