"""One ``PreTrainedConfig`` subclass per variant, on the shared :class:`EffzooConfig`."""

from .axial import AxialConfig
from .base import BERT_FIELDS, BlockSparseConfig, EffzooConfig
from .bigbird import EffzooBigBirdConfig
from .full import FullConfig
from .hedgehog import HedgehogConfig
from .linear import LinearConfig
from .local import LocalConfig
from .longformer import EffzooLongformerConfig
from .performer import PerformerConfig
from .reformer import EffzooReformerConfig
from .routing import RoutingConfig
from .sparse import SparseConfig
from .nystrom import NystromConfig
from .memory_compressed import MemoryCompressedConfig
from .linformer import LinformerConfig
from .inducing import InducingConfig
from .fastformer import FastformerConfig

__all__ = [
    "BERT_FIELDS",
    "AxialConfig",
    "EffzooBigBirdConfig",
    "BlockSparseConfig",
    "EffzooConfig",
    "FullConfig",
    "HedgehogConfig",
    "LinearConfig",
    "LocalConfig",
    "EffzooLongformerConfig",
    "PerformerConfig",
    "EffzooReformerConfig",
    "RoutingConfig",
    "SparseConfig",
    "NystromConfig",
    "MemoryCompressedConfig",
    "LinformerConfig",
    "InducingConfig",
    "FastformerConfig",
]
