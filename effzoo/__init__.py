"""effzoo: efficient transformers as first-class Hugging Face Transformers models.

Importing the package registers every variant with ``AutoConfig`` and the ``AutoModel*``
classes, so ``AutoModel.from_pretrained`` loads any effzoo checkpoint. Every variant's config
and model classes (``FullConfig``, ``PerformerForMaskedLM``, ...) are exported here by name; a
test checks this list against the table of variants in :mod:`effzoo.variants`.

A class whose name would equal one of Transformers' carries the ``Effzoo`` prefix
(``EffzooBigBirdConfig``, ``EffzooLongformerModel``): Transformers' Auto classes resolve configs
by class name, so a clash would build Transformers' model from an effzoo config. The unprefixed
names of earlier releases still import, with a deprecation warning.
"""

import warnings as _warnings

from .attention import AttentionMechanism, dense_reference_attention
from .configs import EffzooConfig
from .configs.full import FullConfig
from .modeling.full import (
    FullForCausalLM,
    FullForMaskedLM,
    FullForMultipleChoice,
    FullForQuestionAnswering,
    FullForSequenceClassification,
    FullForTokenClassification,
    FullModel,
    FullPreTrainedModel,
)
from .configs.performer import PerformerConfig
from .modeling.performer import (
    PerformerForCausalLM,
    PerformerForMaskedLM,
    PerformerForMultipleChoice,
    PerformerForQuestionAnswering,
    PerformerForSequenceClassification,
    PerformerForTokenClassification,
    PerformerModel,
    PerformerPreTrainedModel,
)
from .configs.linear import LinearConfig
from .modeling.linear import (
    LinearForCausalLM,
    LinearForMaskedLM,
    LinearForMultipleChoice,
    LinearForQuestionAnswering,
    LinearForSequenceClassification,
    LinearForTokenClassification,
    LinearModel,
    LinearPreTrainedModel,
)
from .configs.hedgehog import HedgehogConfig
from .modeling.hedgehog import (
    HedgehogForCausalLM,
    HedgehogForMaskedLM,
    HedgehogForMultipleChoice,
    HedgehogForQuestionAnswering,
    HedgehogForSequenceClassification,
    HedgehogForTokenClassification,
    HedgehogModel,
    HedgehogPreTrainedModel,
)
from .configs.local import LocalConfig
from .modeling.local import (
    LocalForCausalLM,
    LocalForMaskedLM,
    LocalForMultipleChoice,
    LocalForQuestionAnswering,
    LocalForSequenceClassification,
    LocalForTokenClassification,
    LocalModel,
    LocalPreTrainedModel,
)
from .configs.longformer import EffzooLongformerConfig
from .modeling.longformer import (
    EffzooLongformerForCausalLM,
    EffzooLongformerForMaskedLM,
    EffzooLongformerForMultipleChoice,
    EffzooLongformerForQuestionAnswering,
    EffzooLongformerForSequenceClassification,
    EffzooLongformerForTokenClassification,
    EffzooLongformerModel,
    EffzooLongformerPreTrainedModel,
)
from .configs.bigbird import EffzooBigBirdConfig
from .modeling.bigbird import (
    EffzooBigBirdForMaskedLM,
    EffzooBigBirdForMultipleChoice,
    EffzooBigBirdForQuestionAnswering,
    EffzooBigBirdForSequenceClassification,
    EffzooBigBirdForTokenClassification,
    EffzooBigBirdModel,
    EffzooBigBirdPreTrainedModel,
)
from .configs.sparse import SparseConfig
from .modeling.sparse import (
    SparseForCausalLM,
    SparseForMaskedLM,
    SparseForMultipleChoice,
    SparseForQuestionAnswering,
    SparseForSequenceClassification,
    SparseForTokenClassification,
    SparseModel,
    SparsePreTrainedModel,
)
from .configs.axial import AxialConfig
from .modeling.axial import (
    AxialForCausalLM,
    AxialForMaskedLM,
    AxialForMultipleChoice,
    AxialForQuestionAnswering,
    AxialForSequenceClassification,
    AxialForTokenClassification,
    AxialModel,
    AxialPreTrainedModel,
)
from .configs.reformer import EffzooReformerConfig
from .modeling.reformer import (
    EffzooReformerForCausalLM,
    EffzooReformerForMaskedLM,
    EffzooReformerForMultipleChoice,
    EffzooReformerForQuestionAnswering,
    EffzooReformerForSequenceClassification,
    EffzooReformerForTokenClassification,
    EffzooReformerModel,
    EffzooReformerPreTrainedModel,
)
from .configs.routing import RoutingConfig
from .modeling.routing import (
    RoutingForCausalLM,
    RoutingForMaskedLM,
    RoutingForMultipleChoice,
    RoutingForQuestionAnswering,
    RoutingForSequenceClassification,
    RoutingForTokenClassification,
    RoutingModel,
    RoutingPreTrainedModel,
)
from .configs.fastformer import FastformerConfig
from .modeling.fastformer import (
    FastformerForMaskedLM,
    FastformerForMultipleChoice,
    FastformerForQuestionAnswering,
    FastformerForSequenceClassification,
    FastformerForTokenClassification,
    FastformerModel,
    FastformerPreTrainedModel,
)
from .configs.inducing import InducingConfig
from .modeling.inducing import (
    InducingForMaskedLM,
    InducingForMultipleChoice,
    InducingForQuestionAnswering,
    InducingForSequenceClassification,
    InducingForTokenClassification,
    InducingModel,
    InducingPreTrainedModel,
)
from .configs.linformer import LinformerConfig
from .modeling.linformer import (
    LinformerForMaskedLM,
    LinformerForMultipleChoice,
    LinformerForQuestionAnswering,
    LinformerForSequenceClassification,
    LinformerForTokenClassification,
    LinformerModel,
    LinformerPreTrainedModel,
)
from .configs.memory_compressed import MemoryCompressedConfig
from .modeling.memory_compressed import (
    MemoryCompressedForCausalLM,
    MemoryCompressedForMaskedLM,
    MemoryCompressedForMultipleChoice,
    MemoryCompressedForQuestionAnswering,
    MemoryCompressedForSequenceClassification,
    MemoryCompressedForTokenClassification,
    MemoryCompressedModel,
    MemoryCompressedPreTrainedModel,
)
from .configs.nystrom import NystromConfig
from .modeling.nystrom import (
    NystromForMaskedLM,
    NystromForMultipleChoice,
    NystromForQuestionAnswering,
    NystromForSequenceClassification,
    NystromForTokenClassification,
    NystromModel,
    NystromPreTrainedModel,
)

from .conversion import compare_with_source, convert
from .variants import VARIANTS, get_variant, register_all

__version__ = "0.1.0"

register_all()

#: Names of earlier releases -> the name that replaced them.
_RENAMED = {
    f"{variant}{suffix}": f"Effzoo{variant}{suffix}"
    for variant in ("BigBird", "Longformer")
    for suffix in ("Config", "PreTrainedModel", "Model", "ForMaskedLM", "ForCausalLM", "ForSequenceClassification",
                   "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")
    if f"Effzoo{variant}{suffix}" in globals()
}


def __getattr__(name: str):
    if name in _RENAMED:
        _warnings.warn(
            f"effzoo.{name} is now effzoo.{_RENAMED[name]} (the old name is Transformers' own class); "
            "the old name will be removed in a future release.",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'effzoo' has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "AttentionMechanism",
    "EffzooConfig",
    "compare_with_source",
    "convert",
    "dense_reference_attention",
    "get_variant",
    "FullConfig",
    "FullForCausalLM",
    "FullForMaskedLM",
    "FullForMultipleChoice",
    "FullForQuestionAnswering",
    "FullForSequenceClassification",
    "FullForTokenClassification",
    "FullModel",
    "FullPreTrainedModel",
    "PerformerConfig",
    "PerformerForCausalLM",
    "PerformerForMaskedLM",
    "PerformerForMultipleChoice",
    "PerformerForQuestionAnswering",
    "PerformerForSequenceClassification",
    "PerformerForTokenClassification",
    "PerformerModel",
    "PerformerPreTrainedModel",
    "LinearConfig",
    "LinearForCausalLM",
    "LinearForMaskedLM",
    "LinearForMultipleChoice",
    "LinearForQuestionAnswering",
    "LinearForSequenceClassification",
    "LinearForTokenClassification",
    "LinearModel",
    "LinearPreTrainedModel",
    "HedgehogConfig",
    "HedgehogForCausalLM",
    "HedgehogForMaskedLM",
    "HedgehogForMultipleChoice",
    "HedgehogForQuestionAnswering",
    "HedgehogForSequenceClassification",
    "HedgehogForTokenClassification",
    "HedgehogModel",
    "HedgehogPreTrainedModel",
    "LocalConfig",
    "LocalForCausalLM",
    "LocalForMaskedLM",
    "LocalForMultipleChoice",
    "LocalForQuestionAnswering",
    "LocalForSequenceClassification",
    "LocalForTokenClassification",
    "LocalModel",
    "LocalPreTrainedModel",
    "EffzooLongformerConfig",
    "EffzooLongformerForCausalLM",
    "EffzooLongformerForMaskedLM",
    "EffzooLongformerForMultipleChoice",
    "EffzooLongformerForQuestionAnswering",
    "EffzooLongformerForSequenceClassification",
    "EffzooLongformerForTokenClassification",
    "EffzooLongformerModel",
    "EffzooLongformerPreTrainedModel",
    "EffzooBigBirdConfig",
    "EffzooBigBirdForMaskedLM",
    "EffzooBigBirdForMultipleChoice",
    "EffzooBigBirdForQuestionAnswering",
    "EffzooBigBirdForSequenceClassification",
    "EffzooBigBirdForTokenClassification",
    "EffzooBigBirdModel",
    "EffzooBigBirdPreTrainedModel",
    "SparseConfig",
    "SparseForCausalLM",
    "SparseForMaskedLM",
    "SparseForMultipleChoice",
    "SparseForQuestionAnswering",
    "SparseForSequenceClassification",
    "SparseForTokenClassification",
    "SparseModel",
    "SparsePreTrainedModel",
    "AxialConfig",
    "AxialForCausalLM",
    "AxialForMaskedLM",
    "AxialForMultipleChoice",
    "AxialForQuestionAnswering",
    "AxialForSequenceClassification",
    "AxialForTokenClassification",
    "AxialModel",
    "AxialPreTrainedModel",
    "EffzooReformerConfig",
    "EffzooReformerForCausalLM",
    "EffzooReformerForMaskedLM",
    "EffzooReformerForMultipleChoice",
    "EffzooReformerForQuestionAnswering",
    "EffzooReformerForSequenceClassification",
    "EffzooReformerForTokenClassification",
    "EffzooReformerModel",
    "EffzooReformerPreTrainedModel",
    "RoutingConfig",
    "RoutingForCausalLM",
    "RoutingForMaskedLM",
    "RoutingForMultipleChoice",
    "RoutingForQuestionAnswering",
    "RoutingForSequenceClassification",
    "RoutingForTokenClassification",
    "RoutingModel",
    "RoutingPreTrainedModel",
    "FastformerConfig",
    "FastformerForMaskedLM",
    "FastformerForMultipleChoice",
    "FastformerForQuestionAnswering",
    "FastformerForSequenceClassification",
    "FastformerForTokenClassification",
    "FastformerModel",
    "FastformerPreTrainedModel",
    "InducingConfig",
    "InducingForMaskedLM",
    "InducingForMultipleChoice",
    "InducingForQuestionAnswering",
    "InducingForSequenceClassification",
    "InducingForTokenClassification",
    "InducingModel",
    "InducingPreTrainedModel",
    "LinformerConfig",
    "LinformerForMaskedLM",
    "LinformerForMultipleChoice",
    "LinformerForQuestionAnswering",
    "LinformerForSequenceClassification",
    "LinformerForTokenClassification",
    "LinformerModel",
    "LinformerPreTrainedModel",
    "MemoryCompressedConfig",
    "MemoryCompressedForCausalLM",
    "MemoryCompressedForMaskedLM",
    "MemoryCompressedForMultipleChoice",
    "MemoryCompressedForQuestionAnswering",
    "MemoryCompressedForSequenceClassification",
    "MemoryCompressedForTokenClassification",
    "MemoryCompressedModel",
    "MemoryCompressedPreTrainedModel",
    "NystromConfig",
    "NystromForMaskedLM",
    "NystromForMultipleChoice",
    "NystromForQuestionAnswering",
    "NystromForSequenceClassification",
    "NystromForTokenClassification",
    "NystromModel",
    "NystromPreTrainedModel",
]
