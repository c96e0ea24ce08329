"""Renaming a source state dict into effzoo's names (BERT's), and resizing its position table.

What differs per source model type is described in :mod:`.families`.
"""

from __future__ import annotations

import torch

from .families import SourceFamily

BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
POSITION_KEY = "embeddings.position_embeddings.weight"

def canonical_state_dict(state_dict: dict[str, torch.Tensor], family: SourceFamily) -> dict[str, torch.Tensor]:
    """Source tensors under effzoo names, backbone keys without a prefix; buffers dropped."""
    renames = family.renames
    if any(key.startswith("classifier.out_proj.") for key in state_dict):
        renames += family.classification_renames
    canonical = {}
    for key, tensor in state_dict.items():
        if key.endswith(("position_ids", "token_type_ids")):
            continue  # buffers that some checkpoints saved; rebuilt by the model
        key = key.removeprefix(f"{family.prefix}.")
        for old, new in renames:
            if old in key:
                key = key.replace(old, new, 1)
                break
        canonical[key] = tensor
    return canonical


def resize_positions(table: torch.Tensor, offset: int, num_positions: int) -> torch.Tensor:
    """Drop the offset rows, then tile the learned rows up to ``num_positions`` (the Longformer recipe).

    Copying the learned table again and again keeps the local structure the attention relies on,
    so a model with extended positions starts close to the original (Beltagy et al. 2020, §5).
    A shorter ``num_positions`` keeps the first rows.
    """
    learned = table[offset:]
    repeats = -(-num_positions // learned.shape[0])
    return learned.repeat(repeats, 1)[:num_positions].clone()


def upcycle_feed_forward(state_dict: dict[str, torch.Tensor], config) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Sparse upcycling (Komatsuzaki et al. 2022): each mixture-of-experts layer's dense feed-forward
    (``encoder.layer.N.intermediate.dense`` and ``…output.dense``) copied into every one of its experts
    (``encoder.layer.N.experts.K.…``). The LayerNorm stays where it is; the router is new.

    Returns the new state dict (backbone keys without prefix) and the upcycled layers.
    """
    if not config.num_experts:
        return state_dict, []
    upcycled, layers = dict(state_dict), []
    for index in range(config.num_hidden_layers):
        if not config.is_moe_layer(index):
            continue
        prefix = f"encoder.layer.{index}."
        for part in ("intermediate.dense.", "output.dense."):
            for name in ("weight", "bias"):
                tensor = upcycled.pop(prefix + part + name, None)
                if tensor is None:
                    continue
                for expert in range(config.num_experts):
                    upcycled[f"{prefix}experts.{expert}.{part}{name}"] = tensor.clone()
        layers.append(index)
    return upcycled, layers


def with_backbone_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Backbone keys under ``prefix`` (``"bert."`` for the heads, ``""`` for the bare model)."""
    return {(prefix + key if key.startswith(BACKBONE_PREFIXES) else key): value for key, value in state_dict.items()}
