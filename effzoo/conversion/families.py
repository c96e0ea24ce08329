"""The source model types effzoo converts, and how each names its weights and settings.

BERT is effzoo's own naming. RoBERTa adds a prefix, a position table that starts at
``pad_token_id + 1`` and its own heads (``lm_head``; a classification head whose dense layer
is BERT's pooler). Transformers' Longformer is RoBERTa plus per-layer global projections,
which become the ``longformer`` mechanism's own; BigBird is BERT with a bare ``pooler`` Linear.
Transformers' Reformer differs throughout and is translated by :mod:`.reformer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ROBERTA_HEADS = (
    ("lm_head.dense.", "cls.predictions.transform.dense."),
    ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
    ("lm_head.decoder.", "cls.predictions.decoder."),
    ("lm_head.bias", "cls.predictions.bias"),
)
# RobertaClassificationHead is tanh(dense(x[:, 0])) then out_proj: BERT's pooler + classifier.
_ROBERTA_CLASSIFICATION_HEAD = (("classifier.dense.", "pooler.dense."), ("classifier.out_proj.", "classifier."))
_LONGFORMER_GLOBAL_PROJECTIONS = tuple(
    (f".attention.self.{name}_global.", f".attention.self.mechanism.{name}_global.")
    for name in ("query", "key", "value")
)


@dataclass(frozen=True)
class SourceFamily:
    """How checkpoints of one ``model_type`` name their tensors and settings."""

    #: The base model's prefix in checkpoints with a head.
    prefix: str
    #: The position table starts at ``pad_token_id + 1`` (RoBERTa's convention).
    offset_positions: bool = False
    #: (old, new) substrings of tensor names, the first match applied.
    renames: tuple[tuple[str, str], ...] = ()
    #: Renames applied when the RoBERTa classification head (``classifier.out_proj``) is present.
    classification_renames: tuple[tuple[str, str], ...] = ()
    #: Config fields carried to a target variant whose config has them.
    settings: tuple[str, ...] = ()
    #: Settings that make the target compute what the source computed (where the target has them).
    equivalent_settings: dict[str, object] = field(default_factory=dict)

    def position_offset(self, config: dict) -> int:
        """Rows of the source position table before position 0."""
        return config.get("pad_token_id", 1) + 1 if self.offset_positions else 0


FAMILIES: dict[str, SourceFamily] = {
    "bert": SourceFamily("bert"),
    "roberta": SourceFamily("roberta", True, _ROBERTA_HEADS, _ROBERTA_CLASSIFICATION_HEAD),
    "longformer": SourceFamily(
        "longformer", True, _ROBERTA_HEADS + _LONGFORMER_GLOBAL_PROJECTIONS, _ROBERTA_CLASSIFICATION_HEAD,
        settings=("attention_window",), equivalent_settings={"global_special_tokens": False},
    ),
    # Transformers' Reformer: its names and settings are translated whole by ``reformer.py``.
    "reformer": SourceFamily("reformer"),
    "big_bird": SourceFamily(
        "bert", renames=(("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias")),
        settings=("block_size", "num_random_blocks"), equivalent_settings={"global_special_tokens": False},
    ),
}
