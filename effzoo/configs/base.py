"""The configuration every variant shares: BERT's fields plus the backbone's own options.

A variant's config subclasses :class:`EffzooConfig`, sets ``model_type`` (always starting
with ``effzoo-``) and adds the fields of its mechanism. Field names are BERT's, so a BERT
config converts by copying them.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, ClassVar

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
    "sep_token_id",
    "classifier_dropout",
    "id2label",
    "label2id",
    "problem_type",
)


def config_fields(config_class: type[PreTrainedConfig]) -> set[str]:
    """The fields a config class adds to ``PreTrainedConfig``: its settings (class constants excluded)."""
    return {entry.name for entry in fields(config_class)} - {entry.name for entry in fields(PreTrainedConfig)}


class EffzooConfig(PreTrainedConfig):
    """Shared base of every effzoo config: a BERT encoder with a swappable attention mechanism.

    The defaults are BERT-base's. ``is_decoder=True`` makes attention causal (used by the
    ``ForCausalLM`` head of variants whose mechanism can be causal).

    Backbone options, each off by default (the default model is BERT, bit for bit), each working
    with every attention:

    - Switch mixture-of-experts feed-forward (Fedus et al. 2021): ``num_experts`` (0 = the dense
      feed-forward) experts per MoE layer, ``num_experts_per_token`` of them per token (1 = Switch,
      2 = GShard-style top-2), each expert taking at most ``capacity_factor`` × its fair share of a
      sequence's real tokens (``eval_capacity_factor`` in evaluation; tokens over capacity skip the
      feed-forward and keep their residual). Every ``encoder_sparse_step``-th layer is MoE (1: all,
      2: every other one, layers 1, 3, 5, … as in the paper). The heads add
      ``router_aux_loss_coef`` × load-balancing loss + ``router_z_loss_coef`` × router z-loss to
      ``loss``; ``router_jitter_noise`` multiplies the router input by U(1 − ε, 1 + ε) in training;
      ``output_router_logits`` returns the router logits of every MoE layer.
    - ``reversible``: Reformer's reversible residual layers (Kitaev et al. 2020): two streams,
      Y₁ = X₁ + Attention(X₂), Y₂ = X₂ + FeedForward(Y₁), activations recomputed in the backward
      pass, so training memory is flat in depth. ``chunk_size_feed_forward`` (Transformers' field)
      runs the dense feed-forward over chunks of that many positions (same outputs, intermediate
      activations of one chunk at a time; a mixture-of-experts layer routes a sequence at once).
    - ``ponder``: PonderNet adaptive depth (Banino et al. 2021) for the sequence-classification and
      multiple-choice heads: a halting probability after each layer, the loss
      Σₙ pₙ·L(yₙ) + ``ponder_beta``·KL(p ‖ Geometric(``ponder_lambda_prior``)), and at inference
      an exit at the first layer whose cumulative halting probability passes ``ponder_threshold``
      (or a sampled exit with ``ponder_sample``).
    - ``layer_attention``: one dict per layer of the attention fields that this layer sets differently
      from the config (Reformer's mix of local and LSH layers, Longformer's per-layer windows); the
      layer's mechanism is built from :meth:`layer_config`. None: every layer alike.
    - ``axial_pos_embds``: Reformer's axial position embeddings (Kitaev et al. 2020, §A.2): position p
      of a grid ``axial_pos_shape`` (row-major) gets the concatenation of one learned vector per axis,
      of sizes ``axial_pos_embds_dim`` (summing to ``hidden_size``): Σ shape · dim parameters instead
      of max_position_embeddings · hidden_size.
    - ``embedding_layer_norm``: BERT's LayerNorm after the embeddings (False: none, as Reformer's).
    - ``reversible_merge``: how the two reversible streams leave the encoder: ``"mean"``,
      LayerNorm((Y₁ + Y₂) / 2), or ``"concat"``, LayerNorm([Y₁; Y₂]) of size 2 · hidden_size (Reformer's),
      which the heads then read (:attr:`encoder_output_size`).
    - ``lm_head_transform``: BERT's dense–activation–LayerNorm before the vocabulary projection
      (False: the projection reads the encoder output directly, as Reformer's LM head).
    """

    model_type = "effzoo"
    #: Output fields that are not predictions: Trainer's evaluation leaves them out.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "cache", "past_key_values", "aux_loss", "z_loss", "router_logits", "dropped_tokens", "halting_probabilities",
    ]

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
    sep_token_id: int | None = None
    use_cache: bool = True
    classifier_dropout: float | None = None
    is_decoder: bool = False
    tie_word_embeddings: bool = True

    # Switch mixture-of-experts feed-forward (Fedus et al. 2021)
    num_experts: int = 0
    num_experts_per_token: int = 1
    capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0
    output_router_logits: bool = False
    encoder_sparse_step: int = 1
    # Reversible residual layers (Kitaev et al. 2020)
    reversible: bool = False
    # PonderNet adaptive depth (Banino et al. 2021)
    ponder: bool = False
    ponder_lambda_prior: float = 0.2
    ponder_beta: float = 0.01
    ponder_threshold: float = 0.5
    ponder_sample: bool = False
    # Per-layer attention settings
    layer_attention: list[dict[str, Any]] | None = None
    # Reformer's embeddings and heads
    axial_pos_embds: bool = False
    axial_pos_shape: list[int] | None = None
    axial_pos_embds_dim: list[int] | None = None
    embedding_layer_norm: bool = True
    reversible_merge: str = "mean"
    lm_head_transform: bool = True

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
        self._check_mixture_of_experts()
        self._check_reversible()
        self._check_ponder()
        self._check_reformer_parts()
        self._check_layer_attention()

    def _check_reformer_parts(self) -> None:
        for name in ("axial_pos_embds", "embedding_layer_norm", "lm_head_transform"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.reversible_merge not in ("mean", "concat"):
            raise ValueError(f"reversible_merge must be 'mean' or 'concat', got {self.reversible_merge!r}.")
        if self.axial_pos_embds:
            shape, dims = self.axial_pos_shape, self.axial_pos_embds_dim
            if (not isinstance(shape, (list, tuple)) or not isinstance(dims, (list, tuple)) or len(shape) != len(dims)
                    or len(shape) < 2 or not all(_is_int(x) and x > 0 for x in [*shape, *dims])):
                raise ValueError(
                    f"axial_pos_embds=True needs axial_pos_shape and axial_pos_embds_dim as lists of positive integers "
                    f"of the same length (at least 2), got {shape!r} and {dims!r}; e.g. axial_pos_shape=[64, 64], "
                    "axial_pos_embds_dim=[64, 192] for hidden_size 256."
                )
            if sum(dims) != self.hidden_size:
                raise ValueError(f"axial_pos_embds_dim {list(dims)} must sum to hidden_size ({self.hidden_size}).")
            if math.prod(shape) < self.max_position_embeddings:
                raise ValueError(
                    f"axial_pos_shape {list(shape)} holds {math.prod(shape)} positions, fewer than "
                    f"max_position_embeddings ({self.max_position_embeddings}); enlarge the grid or lower the maximum."
                )
        if self.tie_word_embeddings and not self.lm_head_transform and self.encoder_output_size != self.hidden_size:
            raise ValueError(
                f"tie_word_embeddings=True needs the vocabulary projection to read hidden_size ({self.hidden_size}) "
                f"features, but with lm_head_transform=False it reads the encoder output ({self.encoder_output_size}, "
                "reversible_merge='concat'); set tie_word_embeddings=False or lm_head_transform=True."
            )

    def _check_layer_attention(self) -> None:
        overrides = self.layer_attention
        if overrides is None:
            return
        if not isinstance(overrides, (list, tuple)) or len(overrides) != self.num_hidden_layers or not all(
                isinstance(layer, dict) for layer in overrides):
            raise ValueError(
                f"layer_attention must be a list of {self.num_hidden_layers} dicts (one per layer, {{}} for a layer "
                f"as the config), got {overrides!r}."
            )
        own = self.attention_fields()
        for index, layer in enumerate(overrides):
            unknown = sorted(set(layer) - own)
            if unknown:
                raise ValueError(
                    f"layer_attention[{index}] sets {unknown}, which are not attention fields of "
                    f"{type(self).__name__}; its attention fields are {sorted(own)}."
                )
            if layer:
                self.layer_config(index).check_backbone()

    @classmethod
    def attention_fields(cls) -> set[str]:
        """The settings a layer's mechanism reads: the fields a variant's config adds to the shared
        backbone's, and the attention dropout."""
        shared = set(EffzooConfig.__annotations__)
        return {"attention_probs_dropout_prob"} | {
            name for klass in cls.__mro__[: cls.__mro__.index(EffzooConfig)]
            for name in vars(klass).get("__annotations__", {}) if name not in shared}

    def layer_config(self, layer_idx: int) -> EffzooConfig:
        """The config layer ``layer_idx``'s mechanism is built from: this one with its ``layer_attention``."""
        if not self.layer_attention or not self.layer_attention[layer_idx]:
            return self
        layer = type(self).__new__(type(self))  # a plain copy: copy.copy would re-run the checks, which call this
        layer.__dict__.update(self.__dict__)
        layer.layer_attention = None
        for name, value in self.layer_attention[layer_idx].items():
            setattr(layer, name, value)
        return layer

    @property
    def encoder_output_size(self) -> int:
        """Features per position of the encoder's output: 2 · hidden_size for concatenated reversible streams."""
        return 2 * self.hidden_size if self.reversible and self.reversible_merge == "concat" else self.hidden_size

    def _check_mixture_of_experts(self) -> None:
        experts = self.num_experts
        if not _is_int(experts) or experts < 0:
            raise ValueError(
                f"num_experts must be a non-negative integer (0 = the dense feed-forward), got {experts!r}."
            )
        per_token = self.num_experts_per_token
        if not _is_int(per_token) or per_token < 1:
            raise ValueError(
                f"num_experts_per_token must be a positive integer (1 = Switch routing, 2 = top-2), got {per_token!r}."
            )
        if experts and per_token > experts:
            raise ValueError(
                f"num_experts_per_token ({per_token}) is larger than num_experts ({experts}); choose at most "
                f"{experts} experts per token, or more experts."
            )
        for name in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(
                    f"{name} must be a number > 0 (each expert takes up to {name} × its fair share of the "
                    f"tokens; the Switch paper trains with 1.0-1.25), got {value!r}."
                )
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (0 turns the loss off), got {value!r}.")
        if not _is_number(self.router_jitter_noise) or not 0.0 <= self.router_jitter_noise < 1.0:
            raise ValueError(f"router_jitter_noise must be in [0, 1), got {self.router_jitter_noise!r}.")
        step = self.encoder_sparse_step
        if not _is_int(step) or step < 1:
            raise ValueError(
                f"encoder_sparse_step must be a positive integer (1 = every layer is a mixture of experts, "
                f"2 = every other one), got {step!r}."
            )

    def _check_reversible(self) -> None:
        if not isinstance(self.reversible, bool):
            raise TypeError(f"reversible must be True or False, got {self.reversible!r}.")
        chunk = self.chunk_size_feed_forward
        if not _is_int(chunk) or chunk < 0:
            raise ValueError(
                f"chunk_size_feed_forward must be a non-negative integer (0 = no chunking), got {chunk!r}."
            )
        if self.reversible and self.ponder:
            raise ValueError(
                "reversible=True and ponder=True cannot be combined: PonderNet's loss needs every layer's state, "
                "which reversible layers recompute instead of keeping. Set one of them to False."
            )

    def _check_ponder(self) -> None:
        if not isinstance(self.ponder, bool) or not isinstance(self.ponder_sample, bool):
            raise TypeError(f"ponder and ponder_sample must be True or False, got {self.ponder!r}, "
                             f"{self.ponder_sample!r}.")
        if not _is_number(self.ponder_lambda_prior) or not 0.0 < self.ponder_lambda_prior <= 1.0:
            raise ValueError(
                f"ponder_lambda_prior must be in (0, 1] (the halting probability per layer of the geometric "
                f"prior; its mean depth is 1/ponder_lambda_prior), got {self.ponder_lambda_prior!r}."
            )
        if not _is_number(self.ponder_beta) or self.ponder_beta < 0:
            raise ValueError(f"ponder_beta must be a number >= 0 (the weight of the KL term), got {self.ponder_beta!r}.")
        if not _is_number(self.ponder_threshold) or not 0.0 < self.ponder_threshold < 1.0:
            raise ValueError(
                f"ponder_threshold must be in (0, 1) (inference stops where the cumulative halting probability "
                f"passes it), got {self.ponder_threshold!r}."
            )

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` has a mixture-of-experts feed-forward (every ``encoder_sparse_step``-th)."""
        return self.num_experts > 0 and (layer_idx + 1) % self.encoder_sparse_step == 0

    @property
    def head_dim(self) -> int:
        """Size of one attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: ``dense_attention_below`` of the windowed patterns. At 512 tokens their blocks gather 1.5x the
#: keys of full attention (a 256-token block and its neighbours), and one dense SDPA with the
#: pattern as a mask measured 1.45x faster than block-gather (one BERT-base attention, forward +
#: backward, batch 1; 1.7-2.2x on a right-padded batch of 4); at 1,024 the two are even.
WINDOWED_DENSE_BELOW = 1024


class BlockSparseConfig(EffzooConfig):
    """Shared fields of the fixed sparse patterns (local, longformer, bigbird, sparse, axial).

    ``global_special_tokens``: the first and last real token of each sequence attend and are
    attended globally (in causal mode only the first, as an attention sink) — converted BERTs
    lean on [CLS] and [SEP]. ``dense_attention_below``: padded lengths below this run one dense SDPA
    with the pattern as a boolean mask (default 0: always the block-sparse path; 1,024 for the
    windowed patterns ``local``, ``longformer``, ``bigbird`` and ``sparse``, whose blocks gather more
    keys than a short input has). ``flex_attention_from``: in inference
    (no gradient), padded lengths from this run compiled flex attention, where the layout allows it
    (see ``attention/flex.py``); None (the default, except for ``bigbird``): never, because on CPU
    the block-gather path measured faster for ``local`` and ``longformer``.
    """

    model_type = "effzoo-blocksparse"

    global_special_tokens: bool = True
    dense_attention_below: int = 0
    flex_attention_from: int | None = None
