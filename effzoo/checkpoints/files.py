"""The files of a Transformers checkpoint folder: their names, the config read and checked, the weight files.

Each caller adds its own check of what the config describes (a convertible source, an effzoo model);
the reading and the messages for a folder that is no checkpoint at all are written once, here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
#: The model card, written by ``effzoo card``.
CARD_FILE = "README.md"
WEIGHTS_FILE = "model.safetensors"
#: Written instead of ``WEIGHTS_FILE`` when the weights are sharded; it names every shard.
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
#: Older checkpoints' weights (a pickle, read with ``weights_only=True``).
PICKLED_WEIGHTS_FILE = "pytorch_model.bin"


def read_config(directory: str | Path, hint: str) -> dict[str, Any]:
    """The folder's ``config.json``: a JSON object whose ``model_type`` is a string.

    Raises ValueError, ending with ``hint`` (what to pass instead) when the folder is not a checkpoint.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory: {hint}.")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory} is not a model checkpoint (it has no {CONFIG_FILE}): {hint}.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}); the checkpoint is corrupt.") from error
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{config_path} names no model_type; the checkpoint is corrupt or not a Transformers one.")
    return config


def weight_files(directory: str | Path, *, pickled: bool = False) -> list[str]:
    """The folder's weight files: ``model.safetensors``, or the shard index and every shard it names,
    or (with ``pickled``, for sources saved by older Transformers) ``pytorch_model.bin``.

    Raises ValueError when the weights, or some of the shards, are missing.
    """
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return [WEIGHTS_FILE]
    index_path = directory / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise ValueError(f"{directory} lacks weight shard(s) {missing} named by {WEIGHTS_INDEX_FILE}.")
        return [WEIGHTS_INDEX_FILE, *shards]
    if pickled and (directory / PICKLED_WEIGHTS_FILE).is_file():
        return [PICKLED_WEIGHTS_FILE]
    expected = f"{WEIGHTS_FILE}, or {WEIGHTS_INDEX_FILE} and its shards" + (
        f", or {PICKLED_WEIGHTS_FILE}" if pickled else "")
    raise ValueError(
        f"No weights in {directory} (expected {expected}): save the model there with save_pretrained, "
        "or pass the folder that holds them."
    )
