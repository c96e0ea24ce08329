"""Output folders and resource figures shared by every command that writes results."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def check_output_dir(output: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to write into a non-empty folder unless told to (``--overwrite``) or resuming there."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"Output {output} exists and is a file; choose a directory path.")
    if output.is_dir() and any(output.iterdir()) and not (overwrite or resuming):
        raise ValueError(f"Output directory {output} is not empty; pass --overwrite to replace it.")


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
