"""The licence a checkpoint inherits from its source, read from the source's own card on this machine."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .files import CARD_FILE
from .location import packaged_checkpoint


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub model id rather than a path on this machine."""
    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def source_license(source_id: str | None) -> str | None:
    """The licence in the source checkpoint's own card, when that card is on this machine: in the
    source folder, in a packaged copy of a Hub checkpoint, or in the Hub cache. Never goes online."""
    if not source_id:
        return None
    candidates = [Path(source_id) / CARD_FILE]
    packaged = packaged_checkpoint(source_id)
    if packaged is not None:
        candidates.append(packaged / CARD_FILE)
    if is_hub_id(source_id):
        cached = try_to_load_from_cache(source_id, CARD_FILE)
        if isinstance(cached, str):  # otherwise None or a "known not to exist" marker
            candidates.append(Path(cached))
    for candidate in candidates:
        if candidate.is_file():
            return ModelCard.load(candidate, ignore_metadata_errors=True).data.license
    return None
