"""The output folder of a command (``--output``): refused when it holds something, unless told to replace it."""

from __future__ import annotations

from pathlib import Path


def check_output_dir(output: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to write into a non-empty folder unless told to (``--overwrite``) or resuming there."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"Output {output} exists and is a file; choose a directory path.")
    if output.is_dir() and any(output.iterdir()) and not (overwrite or resuming):
        raise ValueError(f"Output directory {output} is not empty; pass --overwrite to replace it.")
