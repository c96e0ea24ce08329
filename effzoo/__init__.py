"""effzoo: efficient transformers as first-class Hugging Face Transformers models.

Importing the package registers every variant with ``AutoConfig`` and the ``AutoModel*``
classes, so ``AutoModel.from_pretrained`` loads any effzoo checkpoint.
"""

from .attention import AttentionMechanism, FullAttention, dense_reference_attention
from .configs import EffzooConfig, FullConfig
from .conversion import compare_with_source, convert
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
from .variants import VARIANTS, get_variant, register_all

__version__ = "0.1.0"

register_all()

__all__ = [
    "VARIANTS",
    "AttentionMechanism",
    "EffzooConfig",
    "FullAttention",
    "FullConfig",
    "FullForCausalLM",
    "FullForMaskedLM",
    "FullForMultipleChoice",
    "FullForQuestionAnswering",
    "FullForSequenceClassification",
    "FullForTokenClassification",
    "FullModel",
    "FullPreTrainedModel",
    "compare_with_source",
    "convert",
    "dense_reference_attention",
    "get_variant",
]

