"""The Hub side of a checkpoint: its model card, and the push that publishes it."""

from .card import write_model_card
from .push import PushReport, files_to_upload, push_checkpoint

__all__ = ["PushReport", "files_to_upload", "push_checkpoint", "write_model_card"]
