"""Reading a source checkpoint: its config, checked to be one effzoo converts, and its weights.

Where a named source is (a directory, a packaged copy, a Hub download) is :mod:`effzoo.checkpoints.location`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.files import WEIGHTS_INDEX_FILE, read_config, weight_files
from .families import FAMILIES

_HINT = "pass the directory of a BERT-like Transformers checkpoint, or its Hub id"


def read_source_config(directory: Path) -> dict:
    """The source's ``config.json``, checked to be a BERT-like encoder we can convert."""
    config = read_config(directory, _HINT)
    model_type = config["model_type"]
    if model_type not in FAMILIES:
        raise ValueError(
            f"Cannot convert a checkpoint of model_type {model_type!r} from {directory}: effzoo converts "
            f"BERT-like encoders and Transformers' Reformer ({', '.join(sorted(FAMILIES))})."
        )
    return config


def position_count(directory: Path) -> int:
    """Usable positions of a source checkpoint (RoBERTa's table starts ``pad_token_id + 1`` rows in)."""
    config = read_source_config(directory)
    return config["max_position_embeddings"] - FAMILIES[config["model_type"]].position_offset(config)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint: safetensors (single or sharded), else a ``.bin`` read safely."""
    state_dict: dict[str, torch.Tensor] = {}
    for name in weight_files(directory, pickled=True):
        if name != WEIGHTS_INDEX_FILE:
            state_dict.update(_read_weight_file(directory / name))
    return state_dict


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Weights file {file} could not be read: it is corrupt or truncated ({type(error).__name__}: "
            f"{error}). Download or save the checkpoint again."
        ) from error
