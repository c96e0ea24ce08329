"""One ``PreTrainedConfig`` subclass per variant, on the shared :class:`EffzooConfig`."""

from .base import BERT_FIELDS, EffzooConfig
from .full import FullConfig
from .hedgehog import HedgehogConfig
from .linear import LinearConfig
from .performer import PerformerConfig

__all__ = ["BERT_FIELDS", "EffzooConfig", "FullConfig", "HedgehogConfig", "LinearConfig", "PerformerConfig"]
