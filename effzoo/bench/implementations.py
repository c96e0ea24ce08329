"""The implementations the harness compares, in one registry: name -> builders.

Every row builds the same three things from a :class:`Task`: one encoder layer, a whole small
model, and (where the attention can be causal) a language model for token-by-token decoding.
Rows come from three places:

- every effzoo variant in :data:`effzoo.variants.VARIANTS`, by its name, picked up at call
  time, so a variant added to the zoo is benchmarked with no change here;
- ``bert_sdpa`` (Transformers' own ``BertLayer`` on SDPA, the real competitor at short lengths)
  and ``floor`` (the effzoo layer with the token mixing removed: projections, feed-forward and
  layer norms only, the time no attention mechanism can beat at that size);
- Transformers' own efficient models, prefixed ``hf_`` (``hf_longformer``, ``hf_bigbird``,
  ``hf_reformer``, ``hf_nystromformer``), built as a user of those models would run them
  (the same padding to the window / block / chunk size their ``*Model.forward`` applies).
"""

from __future__ import annotations


from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from ..attention.base import AttentionMechanism
from ..configs.base import EffzooConfig, config_fields
from ..modeling.backbone import EffzooModel, EffzooPreTrainedModel, make_layer, run_layer
from ..modeling.heads import EffzooForCausalLM

#: Fields the harness sets from its own flags (sizes, lengths, dropout 0); ``--set`` may not touch them.
HARNESS_FIELDS = frozenset({
    "hidden_size", "num_attention_heads", "intermediate_size", "feed_forward_size", "attention_head_size",
    "num_hidden_layers", "attn_layers", "max_position_embeddings", "segment_means_seq_len", "vocab_size",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "lsh_attention_probs_dropout_prob",
    "local_attention_probs_dropout_prob", "is_decoder",
})

SCOPES = ("layer", "model", "decoder")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Task:
    """What one measurement builds: sizes, the sequence length (or decoding context) and settings."""

    scope: str = "layer"
    length: int = 512
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_layers: int = 1
    vocab_size: int = 30522
    batch_size: int = 1
    #: Positions needed beyond ``length`` (the tokens a decoding measurement appends).
    extra_positions: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> int:
        return self.length + self.extra_positions

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class Workload:
    """A built module and one call of it on prepared inputs.

    ``forward()`` runs the module once and returns a tensor (a training measurement sums it and
    back-propagates). ``grad_inputs`` are the leaf inputs that need a gradient in training (the
    hidden states entering a layer, as in a stack). A decoder workload has ``forward=None``:
    the harness drives its ``module`` (a causal LM) token by token.
    """

    module: nn.Module
    forward: Callable[[], torch.Tensor] | None = None
    grad_inputs: tuple[torch.Tensor, ...] = ()
    note: str | None = None


Builder = Callable[[Task], Workload]


@dataclass(frozen=True)
class Implementation:
    """One row of the registry: a name, what it is, its config class and its builders."""

    name: str
    kind: str  # "variant", "reference", "floor" or "transformers"
    description: str
    make_config: Callable[[Task], PreTrainedConfig]
    config_class: type
    build_layer: Builder
    build_model: Builder
    build_decoder: Builder | None = None
    #: For a Transformers built-in: the effzoo variant implementing the same idea.
    counterpart: str | None = None

    def builder(self, scope: str) -> Builder | None:
        return {"layer": self.build_layer, "model": self.build_model, "decoder": self.build_decoder}[scope]

    def setting_keys(self) -> list[str]:
        """Config fields ``--set`` may change: the config's own fields minus the harness's."""
        return sorted(config_fields(self.config_class) - HARNESS_FIELDS)

    def check_settings(self, settings: dict[str, Any], length: int = 4096) -> None:
        """Refuse unknown keys (listing the valid ones) and values the config refuses at ``length``."""
        reserved = sorted(set(settings) & HARNESS_FIELDS)
        if reserved:
            raise ValueError(
                f"--set {', '.join(reserved)} for {self.name!r}: the harness sets these itself; use "
                "--hidden-size, --heads, --ffn, --lengths, --model-layers or --decode-layers instead."
            )
        valid = self.setting_keys()
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"Unknown setting(s) {unknown} for {self.name!r}. Valid keys: {', '.join(valid)}.")
        self.make_config(Task(length=length, settings=dict(settings)))


# ---------------------------------------------------------------------------------------------
# The no-attention floor
# ---------------------------------------------------------------------------------------------


class _IdentityOfValues(torch.autograd.Function):
    """Returns ``v``; in the backward, ``q`` and ``k`` get zero gradients.

    Zero (rather than no) gradients keep the backward of the query and key projections in the
    graph, as every attention mechanism has it, so the floor's backward costs what the shared
    layer costs around any mechanism.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v.view_as(v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros_like(grad), torch.zeros_like(grad), grad


class _TokenCount:
    """The floor's decoding cache: nothing to keep, only how many tokens were seen (for positions)."""

    def __init__(self) -> None:
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


class NoTokenMixing(AttentionMechanism):
    """The no-attention floor: each token's context is its own value vector (no token mixing).

    Used inside :class:`~effzoo.modeling.layers.EffzooLayer`, the layer keeps exactly the
    projections, feed-forward and layer norms of every variant, so its time is the limit that no
    attention mechanism can beat at that size. Not a variant: it models nothing.
    """

    supports_causal = True

    @classmethod
    def new_cache(cls, config: Any) -> _TokenCount:
        return _TokenCount()

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: Any = None,
    ) -> torch.Tensor:
        if cache is not None and self.layer_idx == 0:
            cache.seen += q.shape[-2]
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _IdentityOfValues.apply(q, k, v)
        return v


class FloorPreTrainedModel(EffzooPreTrainedModel):
    config_class = EffzooConfig
    mechanism_class = NoTokenMixing


class FloorModel(EffzooModel, FloorPreTrainedModel):
    """The whole model with the floor's layers (the benchmark's, not a variant of the zoo)."""


class FloorForCausalLM(EffzooForCausalLM, FloorPreTrainedModel):
    """The floor as a language model, for the decoding floor: no cache to read per token."""


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _place(module: nn.Module, task: Task) -> nn.Module:
    return module.to(device=task.device, dtype=task.torch_dtype)


def _hidden(task: Task) -> torch.Tensor:
    return torch.randn(task.batch_size, task.length, task.hidden_size, device=task.device, dtype=task.torch_dtype)


def _input_ids(task: Task) -> torch.Tensor:
    return torch.randint(5, task.vocab_size, (task.batch_size, task.length), device=task.device)


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _pad_tokens(hidden: torch.Tensor, padded_length: int) -> torch.Tensor:
    """Zero hidden states appended up to ``padded_length`` (what the HF models pad with tokens)."""
    extra = padded_length - hidden.shape[1]
    return F.pad(hidden, (0, 0, 0, extra)) if extra else hidden


def _padding_note(task: Task, padded: int, what: str) -> str | None:
    if padded == task.length:
        return None
    return f"padded {task.length} -> {padded} tokens ({what}), as the model's forward does"


def _model_workload(model: nn.Module, task: Task, note: str | None = None) -> Workload:
    model = _place(model, task)
    input_ids = _input_ids(task)
    return Workload(model, lambda: model(input_ids=input_ids)[0], (), note)


def _layer_workload(module: nn.Module, task: Task, call: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                    note: str | None = None) -> Workload:
    module = _place(module, task)
    hidden = _hidden(task)
    return Workload(module, lambda: call(module, hidden), (hidden,), note)


# ---------------------------------------------------------------------------------------------
# effzoo variants and the floor
# ---------------------------------------------------------------------------------------------


def _effzoo_config(config_class: type[EffzooConfig]) -> Callable[[Task], EffzooConfig]:
    def make_config(task: Task) -> EffzooConfig:
        fields = dict(
            hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
            intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers,
            vocab_size=task.vocab_size, max_position_embeddings=task.positions,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        fields.update(task.settings)
        return config_class(**fields)

    return make_config


def _reset_mechanisms(module: nn.Module) -> None:
    """Initialise mechanisms' own parameters and buffers (a model's ``post_init`` does this)."""
    for sub in module.modules():
        if isinstance(sub, AttentionMechanism) and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def _effzoo_implementation(name: str, kind: str, description: str, config_class: type[EffzooConfig],
                           mechanism_class: type[AttentionMechanism], model_class: type,
                           causal_lm_class: type | None) -> Implementation:
    make_config = _effzoo_config(config_class)

    def build_layer(task: Task) -> Workload:
        config = make_config(task)
        if config.reversible:
            raise ValueError("reversible=true acts on the whole stack of layers, not on one layer: add --model "
                             "(and --model-layers N) to measure a reversible model.")
        # The backbone's own layer factory, so that backbone options apply (``--set num_experts=8``
        # measures a mixture-of-experts layer: the first MoE layer of the stack).
        layer_idx = config.encoder_sparse_step - 1 if config.num_experts else 0
        layer = make_layer(config, mechanism_class, layer_idx)
        _reset_mechanisms(layer)
        return _layer_workload(layer, task, lambda module, hidden: run_layer(module, hidden, None, False, None, {})[0])

    def build_model(task: Task) -> Workload:
        return _model_workload(model_class(make_config(task)), task)

    def build_decoder(task: Task) -> Workload:
        return Workload(_place(causal_lm_class(make_config(task)), task))

    return Implementation(
        name=name, kind=kind, description=description, make_config=make_config, config_class=config_class,
        build_layer=build_layer, build_model=build_model,
        build_decoder=build_decoder if causal_lm_class is not None else None,
    )


def _variant_implementation(variant: Any) -> Implementation:
    model_class = variant.model_classes["AutoModel"]
    return _effzoo_implementation(
        variant.name, "variant", f"effzoo {variant.name}: {variant.description}", variant.config_class,
        model_class.mechanism_class, model_class, variant.model_classes.get("AutoModelForCausalLM"),
    )


FLOOR = _effzoo_implementation(
    "floor", "floor",
    "no-attention floor: the effzoo layer with the token mixing removed (projections, FFN, layer norms only)",
    EffzooConfig, NoTokenMixing, FloorModel, FloorForCausalLM,
)


# ---------------------------------------------------------------------------------------------
# Transformers' BERT on SDPA
# ---------------------------------------------------------------------------------------------


def _bert_config(task: Task) -> PreTrainedConfig:
    from transformers import BertConfig

    fields = dict(
        hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
        intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers, vocab_size=task.vocab_size,
        max_position_embeddings=task.positions, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    fields.update(task.settings)
    return BertConfig(**fields, attn_implementation="sdpa")


def _bert_layer(task: Task) -> Workload:
    from transformers.models.bert.modeling_bert import BertLayer

    return _layer_workload(BertLayer(_bert_config(task), layer_idx=0), task, lambda module, hidden: module(hidden))


def _bert_model(task: Task) -> Workload:
    from transformers import BertModel

    return _model_workload(BertModel(_bert_config(task)), task)


def _bert_implementation() -> Implementation:
    from transformers import BertConfig

    return Implementation(
        name="bert_sdpa", kind="reference",
        description='Transformers BertLayer with attn_implementation="sdpa" (exact attention, fused kernel)',
        make_config=_bert_config, config_class=BertConfig, build_layer=_bert_layer, build_model=_bert_model,
    )


# ---------------------------------------------------------------------------------------------
# Transformers' Longformer
# ---------------------------------------------------------------------------------------------


def _longformer_config(task: Task) -> PreTrainedConfig:
    from transformers import LongformerConfig

    fields = dict(
        hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
        intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers, vocab_size=task.vocab_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_window=512,
    )
    fields.update(task.settings)
    config = LongformerConfig(**fields)
    if isinstance(config.attention_window, int):  # one window per layer, as LongformerModel expands it
        config.attention_window = [config.attention_window] * config.num_hidden_layers
    # RoBERTa-style positions start after the padding index: two more than the (padded) length.
    config.max_position_embeddings = _round_up(task.positions, _longformer_window(config)) + 2
    return config


def _longformer_window(config: PreTrainedConfig) -> int:
    window = config.attention_window
    window = max(window) if isinstance(window, (list, tuple)) else window
    if not isinstance(window, int) or window <= 0 or window % 2:
        raise ValueError(f"attention_window must be a positive even integer, got {config.attention_window!r}.")
    return window


def _longformer_layer(task: Task) -> Workload:
    from transformers.models.longformer.modeling_longformer import LongformerLayer

    config = _longformer_config(task)
    padded = _round_up(task.length, _longformer_window(config))
    # LongformerModel's mask: 0 = local attention, -10000 = padding (no global tokens here).
    mask = torch.zeros(task.batch_size, padded, device=task.device, dtype=task.torch_dtype)
    mask[:, task.length:] = -10000.0
    is_index_masked, is_index_global = mask < 0, mask > 0

    def call(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = module(_pad_tokens(hidden, padded), attention_mask=mask, is_index_masked=is_index_masked,
                        is_index_global_attn=is_index_global, is_global_attn=False)[0]
        return output[:, : task.length]

    note = _padding_note(task, padded, "a multiple of attention_window")
    return _layer_workload(LongformerLayer(config, layer_id=0), task, call, note)


def _longformer_model(task: Task) -> Workload:
    from transformers import LongformerModel

    config = _longformer_config(task)
    padded = _round_up(task.length, _longformer_window(config))
    return _model_workload(LongformerModel(config), task, _padding_note(task, padded, "a multiple of attention_window"))


# ---------------------------------------------------------------------------------------------
# Transformers' BigBird (block-sparse)
# ---------------------------------------------------------------------------------------------


def _bigbird_config(task: Task) -> PreTrainedConfig:
    from transformers import BigBirdConfig

    fields = dict(
        hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
        intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers, vocab_size=task.vocab_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu",
        attention_type="block_sparse",
    )
    fields.update(task.settings)
    config = BigBirdConfig(**fields)
    if config.block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {config.block_size!r}.")
    # The random-block plans of lengths 1024/3072/4096 index up to max_position_embeddings.
    config.max_position_embeddings = _round_up(task.positions, config.block_size)
    return config


def _bigbird_fallback(config: PreTrainedConfig, length: int) -> str | None:
    """BigBirdModel's own rule: block-sparse needs more tokens than one query block attends to."""
    needed = (5 + 2 * config.num_random_blocks) * config.block_size
    if config.attention_type == "block_sparse" and length <= needed:
        config.attention_type = "original_full"
        return f"block_sparse needs L > {needed}: the model falls back to original_full attention, as BigBirdModel does"
    return None


def _bigbird_layer(task: Task) -> Workload:
    from transformers import BigBirdModel
    from transformers.models.big_bird.modeling_big_bird import BigBirdLayer

    config = _bigbird_config(task)
    fallback = _bigbird_fallback(config, task.length)
    padded = task.length if fallback else _round_up(task.length, config.block_size)
    masks: dict[str, torch.Tensor] = {}
    if not fallback:
        real = torch.zeros(task.batch_size, padded, device=task.device, dtype=task.torch_dtype)
        real[:, : task.length] = 1
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(real, config.block_size)
        masks = dict(band_mask=band, from_mask=from_mask, to_mask=to_mask, blocked_encoder_mask=blocked)

    def call(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = module(_pad_tokens(hidden, padded), attention_mask=None, **masks)
        output = output[0] if isinstance(output, tuple) else output
        return output[:, : task.length]

    note = fallback or _padding_note(task, padded, "a multiple of block_size")
    return _layer_workload(BigBirdLayer(config, seed=0), task, call, note)


def _bigbird_model(task: Task) -> Workload:
    from transformers import BigBirdModel

    config = _bigbird_config(task)
    fallback = _bigbird_fallback(config, task.length)
    note = fallback or _padding_note(task, _round_up(task.length, config.block_size), "a multiple of block_size")
    return _model_workload(BigBirdModel(config), task, note)


# ---------------------------------------------------------------------------------------------
# Transformers' Reformer (LSH attention, reversible layers)
# ---------------------------------------------------------------------------------------------


def _reformer_config(task: Task) -> PreTrainedConfig:
    from transformers import ReformerConfig

    if task.hidden_size % task.num_attention_heads:
        raise ValueError(f"hidden_size {task.hidden_size} must be a multiple of --heads {task.num_attention_heads}.")
    fields = dict(
        hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
        attention_head_size=task.hidden_size // task.num_attention_heads, feed_forward_size=task.intermediate_size,
        attn_layers=["lsh"] * task.num_layers, vocab_size=task.vocab_size, hidden_act="gelu",
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
        axial_pos_embds=False, is_decoder=False,
    )
    fields.update(task.settings)
    config = ReformerConfig(**fields)
    config.max_position_embeddings = _round_up(task.positions, _reformer_chunk(config))
    return config


def _reformer_chunk(config: PreTrainedConfig) -> int:
    chunk = config.lsh_attn_chunk_length
    if not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"lsh_attn_chunk_length must be a positive integer, got {chunk!r}.")
    return chunk


def _reformer_layer(task: Task) -> Workload:
    from transformers.models.reformer.modeling_reformer import ReformerEncoder

    config = _reformer_config(task)
    padded = _round_up(task.length, _reformer_chunk(config))

    def call(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = module(_pad_tokens(hidden, padded), orig_sequence_length=task.length).hidden_states
        return output[:, : task.length]

    note = "one reversible layer (ReformerEncoder: both residual streams, backward by recomputation)"
    padding = _padding_note(task, padded, "a multiple of lsh_attn_chunk_length")
    return _layer_workload(ReformerEncoder(config), task, call, f"{note}; {padding}" if padding else note)


def _reformer_model(task: Task) -> Workload:
    from transformers import ReformerModel

    return _model_workload(ReformerModel(_reformer_config(task)), task)


# ---------------------------------------------------------------------------------------------
# Transformers' Nyströmformer
# ---------------------------------------------------------------------------------------------


def _nystromformer_config(task: Task) -> PreTrainedConfig:
    from transformers import NystromformerConfig

    fields = dict(
        hidden_size=task.hidden_size, num_attention_heads=task.num_attention_heads,
        intermediate_size=task.intermediate_size, num_hidden_layers=task.num_layers, vocab_size=task.vocab_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu",
    )
    fields.update(task.settings)
    config = NystromformerConfig(**fields)
    # Landmarks are segment means over the whole sequence: the segment length is the input length.
    config.segment_means_seq_len = task.length
    config.max_position_embeddings = task.positions + 2  # position ids start at 2
    return config


def _landmarks_divide(config: PreTrainedConfig, task: Task) -> PreTrainedConfig:
    if not isinstance(config.num_landmarks, int) or config.num_landmarks <= 0 or task.length % config.num_landmarks:
        raise ValueError(
            f"Nystromformer needs the length to be a multiple of num_landmarks ({config.num_landmarks}), "
            f"got {task.length}; choose lengths that are, or --set num_landmarks=... that divides them."
        )
    return config


def _nystromformer_layer(task: Task) -> Workload:
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerLayer

    config = _landmarks_divide(_nystromformer_config(task), task)
    return _layer_workload(NystromformerLayer(config), task, lambda module, hidden: module(hidden)[0])


def _nystromformer_model(task: Task) -> Workload:
    from transformers import NystromformerModel

    return _model_workload(NystromformerModel(_landmarks_divide(_nystromformer_config(task), task)), task)


def _transformers_implementations() -> list[Implementation]:
    from transformers import BigBirdConfig, LongformerConfig, NystromformerConfig, ReformerConfig

    return [
        Implementation(
            "hf_longformer", "transformers",
            "Transformers LongformerLayer: sliding window (attention_window=512), no global tokens",
            _longformer_config, LongformerConfig, _longformer_layer, _longformer_model, counterpart="longformer",
        ),
        Implementation(
            "hf_bigbird", "transformers",
            "Transformers BigBirdLayer, block_sparse (block_size=64, 3 random blocks)",
            _bigbird_config, BigBirdConfig, _bigbird_layer, _bigbird_model, counterpart="bigbird",
        ),
        Implementation(
            "hf_reformer", "transformers",
            "Transformers Reformer: one LSH layer (chunk 64, 1 hash), reversible backward",
            _reformer_config, ReformerConfig, _reformer_layer, _reformer_model, counterpart="reformer",
        ),
        Implementation(
            "hf_nystromformer", "transformers",
            "Transformers NystromformerLayer (64 landmarks, conv kernel 65)",
            _nystromformer_config, NystromformerConfig, _nystromformer_layer, _nystromformer_model,
            counterpart="nystrom",
        ),
    ]


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def implementations() -> dict[str, Implementation]:
    """Every implementation the harness knows, by name: references, then the zoo, then Transformers'."""
    from ..variants import VARIANTS

    table = {"bert_sdpa": _bert_implementation(), "floor": FLOOR}
    for name, variant in VARIANTS.items():
        if name in table:
            raise ValueError(f"effzoo variant {name!r} clashes with the benchmark implementation of that name.")
        table[name] = _variant_implementation(variant)
    for implementation in _transformers_implementations():
        table[implementation.name] = implementation
    return table


def get_implementation(name: str) -> Implementation:
    """The implementation called ``name``; a ValueError lists the known names otherwise."""
    table = implementations()
    if name not in table:
        raise ValueError(f"Unknown implementation {name!r}. Known implementations: {', '.join(table)}.")
    return table[name]
