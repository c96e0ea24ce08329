"""Checkpoint folders as files: their names, config, weights, provenance and licence, and where a named one is.

Shared by ``conversion/``, ``hub/`` and ``training/``; it imports none of them (nor any model code), so each
can use it without an import circle.
"""

from .location import packaged_checkpoint, resolve_source
from .provenance import read_provenance, record_provenance

__all__ = ["packaged_checkpoint", "read_provenance", "record_provenance", "resolve_source"]
