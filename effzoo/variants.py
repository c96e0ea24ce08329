"""The table of variants: the one place that lists them, and the Auto registration it drives.

Each variant is a config class and a modeling module. The module's classes are matched to
Transformers' Auto classes by the shared head they derive from, so adding a variant is one
row here plus its config and modeling files.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import transformers

from .configs.base import EffzooConfig
from .modeling import axial as axial_modeling
from .modeling import bigbird as bigbird_modeling
from .modeling import full as full_modeling
from .modeling import hedgehog as hedgehog_modeling
from .modeling import linear as linear_modeling
from .modeling import local as local_modeling
from .modeling import longformer as longformer_modeling
from .modeling import performer as performer_modeling
from .modeling import sparse as sparse_modeling
from .modeling.backbone import EffzooModel
from .modeling.heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)

#: Shared base class -> the Auto class that serves it.
AUTO_CLASS_OF_BASE = {
    EffzooModel: "AutoModel",
    EffzooForMaskedLM: "AutoModelForMaskedLM",
    EffzooForCausalLM: "AutoModelForCausalLM",
    EffzooForSequenceClassification: "AutoModelForSequenceClassification",
    EffzooForTokenClassification: "AutoModelForTokenClassification",
    EffzooForQuestionAnswering: "AutoModelForQuestionAnswering",
    EffzooForMultipleChoice: "AutoModelForMultipleChoice",
}

#: Module holding the shim that ``trust_remote_code=True`` loads from a saved checkpoint.
REMOTE_CODE_MODULE = "effzoo_remote"


@dataclass(frozen=True)
class Variant:
    """One row of the zoo: its name, config class, modeling module and the idea it implements."""

    name: str
    modeling: ModuleType
    description: str

    @property
    def model_classes(self) -> dict[str, type]:
        """Auto class name -> this variant's model class, for every head the variant declares."""
        classes = {}
        for obj in vars(self.modeling).values():
            if isinstance(obj, type) and obj.__module__ == self.modeling.__name__:
                for base, auto_name in AUTO_CLASS_OF_BASE.items():
                    if issubclass(obj, base):
                        classes[auto_name] = obj
        return classes

    @property
    def config_class(self) -> type[EffzooConfig]:
        return self.model_classes["AutoModel"].config_class

    @property
    def auto_map(self) -> dict[str, str]:
        """The ``auto_map`` a saved config carries, pointing at the shipped code module."""
        entries = {"AutoConfig": self.config_class.__name__}
        entries.update({auto: cls.__name__ for auto, cls in self.model_classes.items()})
        return {auto: f"{REMOTE_CODE_MODULE}.{name}" for auto, name in entries.items()}


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in [
        Variant("full", full_modeling, "exact softmax attention (SDPA): BERT itself, the reference and baseline"),
        Variant("performer", performer_modeling, "FAVOR+ positive random features estimating softmax (or ReLU)"),
        Variant("linear", linear_modeling, "elu(x)+1 kernel attention, deterministic, no new parameters"),
        Variant("hedgehog", hedgehog_modeling, "a learnable feature map trained to mimic softmax attention"),
        Variant("local", local_modeling, "blocked local attention: each block sees its neighbour blocks"),
        Variant("longformer", longformer_modeling, "sliding window (optionally dilated) plus global tokens"),
        Variant("bigbird", bigbird_modeling, "window, global and random blocks (bidirectional)"),
        Variant("sparse", sparse_modeling, "Sparse Transformer's strided or fixed factorized patterns"),
        Variant("axial", axial_modeling, "attention along the rows and the columns of a 2-D grid"),
    ]
}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; a ValueError lists the known names otherwise."""
    key = name.removeprefix("effzoo-")
    if key not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}. Known variants: {', '.join(sorted(VARIANTS))}.")
    return VARIANTS[key]


def variant_of_config(config: EffzooConfig) -> Variant:
    """The variant a config belongs to, from its ``model_type``."""
    return get_variant(config.model_type)


def register_all() -> None:
    """Register every variant's config and model classes with Transformers' Auto classes.

    Registration is by class, so ``LongformerConfig`` here never resolves to Transformers' own
    class of the same name (whose lookups go by name).
    """
    for variant in VARIANTS.values():
        config_class = variant.config_class
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, model_class in variant.model_classes.items():
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
