"""What makes a folder an effzoo checkpoint, checked with messages that say what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints.files import read_config
from ..variants import Variant, get_variant

_HINT = "pass the folder that `effzoo convert` or a training command wrote (its --output)"


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Variant]:
    """The folder's ``config.json`` and the variant it belongs to.

    Raises ValueError when the folder is not a checkpoint, or is one of another library.
    """
    config = read_config(directory, _HINT)
    model_type = config["model_type"]
    if not model_type.startswith("effzoo-"):
        raise ValueError(
            f"{directory} holds a {model_type!r} checkpoint, not an effzoo one; convert it first: "
            f"`effzoo convert {directory} --to VARIANT --output DIR`."
        )
    return config, get_variant(model_type)
