"""effzoo: efficient transformers as first-class Hugging Face Transformers models.

Importing the package registers every variant with ``AutoConfig`` and the ``AutoModel*``
classes, so ``AutoModel.from_pretrained`` loads any effzoo checkpoint. Every variant's config
and model classes (``FullConfig``, ``PerformerForMaskedLM``, ...) are exported here, from the
table of variants in :mod:`effzoo.variants`.
"""

from .attention import AttentionMechanism, dense_reference_attention
from .configs import EffzooConfig
from .conversion import compare_with_source, convert
from .variants import VARIANTS, get_variant, register_all

__version__ = "0.1.0"

register_all()

_VARIANT_CLASSES = {
    cls.__name__: cls
    for variant in VARIANTS.values()
    for cls in (variant.config_class, *variant.model_classes.values())
}
globals().update(_VARIANT_CLASSES)

__all__ = [
    "VARIANTS",
    "AttentionMechanism",
    "EffzooConfig",
    "compare_with_source",
    "convert",
    "dense_reference_attention",
    "get_variant",
    *sorted(_VARIANT_CLASSES),
]
