"""The configuration every variant shares: BERT's fields plus the backbone's own options.

A variant's config subclasses :class:`EffzooConfig`, sets ``model_type`` (always starting
with ``effzoo-``) and adds the fields of its mechanism. Field names are BERT's, so a BERT
config converts by copying them.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

#: Fields a BERT or RoBERTa config shares with :class:`EffzooConfig`; conversion copies these.
BERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "classifier_dropout",
    "id2label",
    "label2id",
    "problem_type",
)


class EffzooConfig(PreTrainedConfig):
    """Shared base of every effzoo config: a BERT encoder with a swappable attention mechanism.

    The defaults are BERT-base's. ``is_decoder=True`` makes attention causal (used by the
    ``ForCausalLM`` head of variants whose mechanism can be causal).
    """

    model_type = "effzoo"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    classifier_dropout: float | None = None
    is_decoder: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.check_backbone()

    def check_backbone(self) -> None:
        """Refuse shapes the backbone cannot build, with the field, the value and the fix."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}); choose a head count that divides it."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")

    @property
    def head_dim(self) -> int:
        """Size of one attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads


class BlockSparseConfig(EffzooConfig):
    """Shared fields of the fixed sparse patterns (local, longformer, bigbird, sparse, axial).

    ``global_special_tokens``: the first and last real token of each sequence attend and are
    attended globally (in causal mode only the first, as an attention sink) — converted BERTs
    lean on [CLS] and [SEP]. ``dense_attention_below``: shorter inputs run one dense SDPA with the
    pattern as a mask (default 0: always the block-sparse path, which is as fast as ``full`` at
    512 tokens and keeps memory linear on padded batches).
    """

    model_type = "effzoo-blocksparse"

    global_special_tokens: bool = True
    dense_attention_below: int = 0
