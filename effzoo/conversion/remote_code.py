"""The code a saved checkpoint carries so that ``trust_remote_code=True`` loads it.

The shim imports the classes from the installed ``effzoo`` package; where effzoo is missing,
Transformers says which package to install.
"""

from __future__ import annotations

from pathlib import Path

from ..variants import REMOTE_CODE_MODULE, Variant


def write_remote_code(directory: str | Path, variant: Variant) -> Path:
    """Write ``effzoo_remote.py`` into ``directory``: the module the config's ``auto_map`` names."""
    names = sorted({entry.split(".", 1)[1] for entry in variant.auto_map.values()})
    path = Path(directory) / f"{REMOTE_CODE_MODULE}.py"
    path.write_text(
        f'"""Classes of the effzoo `{variant.name}` variant, for trust_remote_code=True loading."""\n\n'
        f"from effzoo import {', '.join(names)}\n\n"
        f"__all__ = {names!r}\n"
    )
    return path
