"""Renaming a BERT or RoBERTa state dict into effzoo's names (which are BERT's).

BERT needs no renaming. RoBERTa differs in three places: its prefix, its position table
(which starts at ``pad_token_id + 1``), and its heads (``lm_head``, and a classification head
whose dense layer is BERT's pooler under another name).
"""

from __future__ import annotations

import torch

BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
POSITION_KEY = "embeddings.position_embeddings.weight"

_ROBERTA_HEAD_NAMES = {
    "lm_head.dense.": "cls.predictions.transform.dense.",
    "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.",
    "lm_head.decoder.": "cls.predictions.decoder.",
    "lm_head.bias": "cls.predictions.bias",
}
_ROBERTA_CLASSIFICATION_HEAD_NAMES = {
    # RobertaClassificationHead is tanh(dense(x[:, 0])) then out_proj: BERT's pooler + classifier.
    "classifier.dense.": "pooler.dense.",
    "classifier.out_proj.": "classifier.",
}


def canonical_state_dict(state_dict: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Source tensors under effzoo names, backbone keys without a prefix; buffers dropped."""
    prefix = f"{family}."
    renames = dict(_ROBERTA_HEAD_NAMES) if family == "roberta" else {}
    if family == "roberta" and any(key.startswith("classifier.out_proj.") for key in state_dict):
        renames.update(_ROBERTA_CLASSIFICATION_HEAD_NAMES)
    canonical = {}
    for key, tensor in state_dict.items():
        if key.endswith(("position_ids", "token_type_ids")):
            continue  # buffers that some checkpoints saved; rebuilt by the model
        key = key.removeprefix(prefix)
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        canonical[key] = tensor
    return canonical


def position_offset(family: str, config: dict) -> int:
    """Rows of the source position table before position 0 (RoBERTa: ``pad_token_id + 1``)."""
    return config.get("pad_token_id", 1) + 1 if family == "roberta" else 0


def resize_positions(table: torch.Tensor, offset: int, num_positions: int) -> torch.Tensor:
    """Drop the offset rows, then tile the learned rows up to ``num_positions`` (the Longformer recipe).

    Copying the learned table again and again keeps the local structure the attention relies on,
    so a model with extended positions starts close to the original (Beltagy et al. 2020, §5).
    A shorter ``num_positions`` keeps the first rows.
    """
    learned = table[offset:]
    repeats = -(-num_positions // learned.shape[0])
    return learned.repeat(repeats, 1)[:num_positions].clone()


def with_backbone_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Backbone keys under ``prefix`` (``"bert."`` for the heads, ``""`` for the bare model)."""
    return {(prefix + key if key.startswith(BACKBONE_PREFIXES) else key): value for key, value in state_dict.items()}
