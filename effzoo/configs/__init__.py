"""One ``PreTrainedConfig`` subclass per variant, on the shared :class:`EffzooConfig`."""

from .base import BERT_FIELDS, EffzooConfig
from .full import FullConfig

__all__ = ["BERT_FIELDS", "EffzooConfig", "FullConfig"]
