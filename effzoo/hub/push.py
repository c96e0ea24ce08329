"""``effzoo push``: upload a checkpoint folder to the Hugging Face Hub.

It goes up with ``huggingface_hub.HfApi`` (``create_repo`` then ``upload_folder``), only once
the folder is a complete effzoo checkpoint: config, weights and model card. The token is the
one ``huggingface_hub`` finds itself, from ``hf auth login`` or the ``HF_TOKEN`` variable;
effzoo never reads or takes one. A dry run lists exactly the files that would go up: the
folder's files filtered by the same patterns ``upload_folder`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from ..checkpoints.files import CARD_FILE, weight_files
from .checkpoint import read_checkpoint

#: Not uploaded, as in ``Trainer.push_to_hub``: Trainer's intermediate ``checkpoint-*`` folders
#: and private ``_*`` files; plus Python caches.
IGNORE_PATTERNS = ("_*", "checkpoint-*", "*__pycache__*")


@dataclass
class PushReport:
    """What a push sent (or, for a dry run, would send); ``str(report)`` is what ``effzoo push`` prints."""

    repo_id: str
    revision: str | None
    files: list[str] = field(default_factory=list)
    dry_run: bool = False
    url: str | None = None

    def __str__(self) -> str:
        target = f"{self.repo_id}" + (f" (revision {self.revision})" if self.revision else "")
        heading = f"would upload to {target}" if self.dry_run else f"uploaded to {target}: {self.url}"
        return "\n".join([f"{heading}, {len(self.files)} files:", *(f"  {name}" for name in self.files)])


def files_to_upload(directory: str | Path) -> list[str]:
    """The folder's files that a push uploads (relative POSIX paths, sorted).

    Raises ValueError when the folder is not an effzoo checkpoint, or lacks its weights or card.
    """
    directory = Path(directory)
    read_checkpoint(directory)
    weight_files(directory)
    if not (directory / CARD_FILE).is_file():
        raise ValueError(
            f"{directory} has no model card ({CARD_FILE}); write it first with `effzoo card {directory}`."
        )
    files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
    return list(filter_repo_objects(files, ignore_patterns=[*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))


def push_checkpoint(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
) -> PushReport:
    """Upload the checkpoint in ``directory`` to the Hub model repo ``repo_id``.

    The repo is created if needed (``private`` applies then); ``revision`` names a branch, created
    from the default one if needed. ``dry_run`` checks and lists, and sends nothing.
    """
    validate_repo_id(repo_id)
    report = PushReport(repo_id, revision, files_to_upload(directory), dry_run)
    if dry_run:
        return report
    if get_token() is None:
        raise ValueError("Not logged in to the Hugging Face Hub: run `hf auth login`, or set HF_TOKEN.")
    api = HfApi()
    api.create_repo(repo_id, private=private or None, exist_ok=True)  # None: the account's default visibility
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    _, variant = read_checkpoint(directory)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        revision=revision,
        commit_message=commit_message or f"Upload effzoo {variant.name} checkpoint",
        ignore_patterns=list(IGNORE_PATTERNS),  # upload_folder extends the list it is given
    )
    report.url = commit.commit_url
    return report
