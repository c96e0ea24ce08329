"""The table of variants: the one place that lists them, and the Auto registration it drives.

Each variant is a config class and a modeling module. The module's classes are matched to
Transformers' Auto classes by the shared head they derive from, so adding a variant is one
row here plus its config and modeling files.
"""

from __future__ import annotations

import os
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
from .modeling import reformer as reformer_modeling
from .modeling import routing as routing_modeling
from .modeling import sparse as sparse_modeling
from .modeling import nystrom as nystrom_modeling
from .modeling import memory_compressed as memory_compressed_modeling
from .modeling import linformer as linformer_modeling
from .modeling import inducing as inducing_modeling
from .modeling import fastformer as fastformer_modeling
from .modeling.backbone import EffzooModel, EffzooPreTrainedModel
from .modeling.heads import (
    EffzooForCausalLM,
    EffzooForMaskedLM,
    EffzooForMultipleChoice,
    EffzooForQuestionAnswering,
    EffzooForSequenceClassification,
    EffzooForTokenClassification,
)
from .remote_code import REMOTE_CODE_MODULE, write_remote_code

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
        Variant("reformer", reformer_modeling, "angular LSH: attend inside hash buckets, several rounds combined"),
        Variant("routing", routing_modeling,
                "online k-means routing: each cluster attends its nearest tokens, beside local heads"),
        Variant('fastformer', fastformer_modeling,
                'additive attention: a global query and a global key summarise the sequence'),
        Variant('inducing', inducing_modeling,
                "Set Transformer's induced set attention: tokens pooled into m latents and read back"),
        Variant('linformer', linformer_modeling,
                'low-rank projection of keys and values to k rows, at any length, padding excluded'),
        Variant('memory_compressed', memory_compressed_modeling,
                'memory-compressed attention: keys and values pooled by a strided convolution'),
        Variant('nystrom', nystrom_modeling,
                'Nyström approximation of softmax through segment-mean landmarks'),
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


#: Auto classes that serve a head of another Auto class, as Transformers maps BERT-like masked LMs.
AUTO_ALIASES = {"AutoModelForPreTraining": "AutoModelForMaskedLM"}


def missing_head(variant: Variant, auto_name: str) -> type:
    """What ``auto_name`` gets for a variant without that head: a stand-in whose ``from_config`` and
    ``from_pretrained`` raise a ValueError saying why (BigBird's attention cannot be causal, say),
    where Transformers would otherwise report an unrecognised configuration class."""
    head = auto_name.removeprefix("AutoModel")
    mechanism = variant.model_classes["AutoModel"].mechanism_class
    reason = f"The {variant.name} variant has no {head} head"
    if auto_name == "AutoModelForCausalLM" and not mechanism.supports_causal:
        causal = sorted(name for name, row in VARIANTS.items() if "AutoModelForCausalLM" in row.model_classes)
        reason += (f": its attention ({mechanism.__name__}) cannot be causal. For a causal language model use one "
                   f"of the causal variants ({', '.join(causal)}); for {variant.name} use AutoModelForMaskedLM.")
    else:
        reason += f"; its heads are {', '.join(sorted(variant.model_classes))}."

    def refuse(cls: type, *args: object, **kwargs: object) -> None:
        raise ValueError(reason)

    return type(f"{variant.config_class.__name__.removesuffix('Config')}Without{head}", (), {
        "__doc__": reason, "config_class": variant.config_class,
        "_from_config": classmethod(refuse), "from_pretrained": classmethod(refuse),
    })


def write_code_and_auto_map(model: EffzooPreTrainedModel, save_directory: str | os.PathLike) -> None:
    """The backbone's save hook: the config's ``auto_map`` and the code module it points to, so that
    ``trust_remote_code=True`` loads the checkpoint where effzoo is not installed."""
    variant = variant_of_config(model.config)
    model.config.auto_map = variant.auto_map
    os.makedirs(save_directory, exist_ok=True)
    write_remote_code(save_directory, variant)


def register_all() -> None:
    """Register every variant's config and model classes with Transformers' Auto classes.

    Registration is by class; config class names never equal Transformers' own (a test checks), because
    an Auto class that has no registered model for a config looks it up by class name. Every Auto class
    of a shared head is registered for every variant: the variant's model, or :func:`missing_head`.
    """
    EffzooPreTrainedModel.save_hook = write_code_and_auto_map
    for variant in VARIANTS.values():
        config_class = variant.config_class
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name in AUTO_CLASS_OF_BASE.values():
            model_class = variant.model_classes.get(auto_name) or missing_head(variant, auto_name)
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        for auto_name, served in AUTO_ALIASES.items():
            getattr(transformers, auto_name).register(config_class, variant.model_classes[served], exist_ok=True)
