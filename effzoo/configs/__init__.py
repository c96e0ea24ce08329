"""One ``PreTrainedConfig`` subclass per variant, on the shared :class:`EffzooConfig`."""

from .axial import AxialConfig
from .base import BERT_FIELDS, BlockSparseConfig, EffzooConfig
from .bigbird import BigBirdConfig
from .full import FullConfig
from .hedgehog import HedgehogConfig
from .linear import LinearConfig
from .local import LocalConfig
from .longformer import LongformerConfig
from .performer import PerformerConfig
from .sparse import SparseConfig

__all__ = [
    "BERT_FIELDS",
    "AxialConfig",
    "BigBirdConfig",
    "BlockSparseConfig",
    "EffzooConfig",
    "FullConfig",
    "HedgehogConfig",
    "LinearConfig",
    "LocalConfig",
    "LongformerConfig",
    "PerformerConfig",
    "SparseConfig",
]
