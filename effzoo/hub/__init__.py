"""The Hub side of a checkpoint: its provenance, its model card, and the push that publishes it."""

from .card import write_model_card
from .provenance import read_provenance, record_provenance
from .push import PushReport, files_to_upload, push_checkpoint

__all__ = [
    "PushReport",
    "files_to_upload",
    "push_checkpoint",
    "read_provenance",
    "record_provenance",
    "write_model_card",
]
