"""What makes a folder an effzoo checkpoint, checked with messages that say what is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..variants import Variant, get_variant

#: The model card, written by ``effzoo card``.
CARD_FILE = "README.md"
WEIGHTS_FILE = "model.safetensors"
#: Written instead of ``WEIGHTS_FILE`` when the weights are sharded; it names every shard.
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Variant]:
    """The folder's ``config.json`` and the variant it belongs to.

    Raises ValueError when the folder is not a checkpoint, or is one of another library.
    """
    directory = Path(directory)
    hint = "pass the folder that `effzoo convert` or a training command wrote (its --output)"
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory: {hint}.")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{directory} is not a model checkpoint (it has no config.json): {hint}.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}); the checkpoint is corrupt.") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type.startswith("effzoo-"):
        raise ValueError(
            f"{directory} holds a {model_type!r} checkpoint, not an effzoo one; convert it first: "
            f"`effzoo convert {directory} --to VARIANT --output DIR`."
        )
    return config, get_variant(model_type)


def weight_files(directory: str | Path) -> list[str]:
    """``model.safetensors``, or the shard index and every shard it names.

    Raises ValueError when the weights, or some of the shards, are missing.
    """
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return [WEIGHTS_FILE]
    index_path = directory / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        raise ValueError(
            f"{directory} has no weights ({WEIGHTS_FILE}, or {WEIGHTS_INDEX_FILE} and its shards): "
            "save the model there with save_pretrained, or pass the folder that holds them."
        )
    shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    missing = [shard for shard in shards if not (directory / shard).is_file()]
    if missing:
        raise ValueError(f"{directory} lacks weight shard(s) {missing} named by {WEIGHTS_INDEX_FILE}.")
    return [WEIGHTS_INDEX_FILE, *shards]
