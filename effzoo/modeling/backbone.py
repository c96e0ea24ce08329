"""The one BERT-shaped backbone every variant shares; only the attention mechanism differs.

Module and parameter names are BERT's (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``…attention.output.dense``, ``…intermediate.dense``,
``…output.LayerNorm``, ``pooler.dense``), so a BERT state dict loads with no renaming and the
only new parameters are the mechanism's own, under ``…attention.self.mechanism``.

The backbone options of the config add their own modules here, for every mechanism alike:
a mixture-of-experts layer has ``encoder.layer.N.router.weight`` and
``encoder.layer.N.experts.K.{intermediate,output}.dense`` instead of the dense feed-forward (its
``output.LayerNorm`` stays; see ``moe.py``); reversible layers add ``encoder.LayerNorm`` over the
merged streams (see ``reversible.py``). A layer's parts live in ``layers.py``; the
mixture-of-experts layer beside its router in ``moe.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils.generic import can_return_tuple

from ..attention.base import AttentionMechanism
from ..attention.feature_maps import FeatureMap
from ..configs.base import EffzooConfig
from .layers import ATTENTION_WEIGHTS_SINK, EffzooLayer, keyword_inputs
from .moe import EffzooMoELayer, Routing, SwitchRouter, summarise_routing
from .outputs import CACHE_FIELD, EffzooModelOutput
from .position_embeddings import AxialPositionEmbeddings, AxialPositionWeights
from .ponder import HaltingUnits
from .reversible import run_two_streams


class EffzooEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm and dropout (BERT's).

    With ``axial_pos_embds`` the positions are Reformer's axial embeddings (``position_embeddings.py``);
    with ``embedding_layer_norm=False`` there is no LayerNorm (Reformer's embeddings have none).
    """

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (AxialPositionEmbeddings(config) if config.axial_pos_embds
                                    else nn.Embedding(config.max_position_embeddings, config.hidden_size))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.embedding_layer_norm
                          else None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        if self.LayerNorm is not None:
            embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


#: ``exit_hook(layer_index, hidden_states) -> keep``: after a layer, a bool per running row, True to go on.
ExitHook = Callable[[int, torch.Tensor], torch.Tensor]


def make_layer(config: EffzooConfig, mechanism_class: type[AttentionMechanism], layer_idx: int) -> nn.Module:
    """Layer ``layer_idx`` of the stack: a mixture-of-experts layer where ``config.is_moe_layer``, else BERT's."""
    layer_class = EffzooMoELayer if config.is_moe_layer(layer_idx) else EffzooLayer
    return layer_class(config, mechanism_class, layer_idx)


def run_layer(
    layer: nn.Module, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None, causal: bool, cache: Any,
    mechanism_inputs: dict[str, Any],
) -> tuple[torch.Tensor, Routing | None]:
    """One layer's output and, for a mixture-of-experts layer, its routing."""
    output = layer(hidden_states, padding_mask, causal, past_key_values=cache, **mechanism_inputs)
    if isinstance(output, tuple):
        return output[0], Routing(*output[1:])
    return output, None


class EffzooEncoder(nn.Module):
    """The stack of layers (dense or mixture-of-experts, per ``config.is_moe_layer``).

    With ``config.reversible`` the stack runs as Reformer's two streams (``reversible.py``), merged
    at the end as ``LayerNorm((Y₁ + Y₂) / 2)``, or ``LayerNorm([Y₁; Y₂])`` of twice the width with
    ``reversible_merge="concat"`` (Reformer's). ``recompute_reversible`` (default True) recomputes
    activations in the backward pass; False keeps them (the same network, for comparison).
    """

    def __init__(self, config: EffzooConfig, mechanism_class: type[AttentionMechanism]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [make_layer(config, mechanism_class, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.reversible = config.reversible
        self.concatenate_streams = config.reversible_merge == "concat"
        if self.reversible:
            self.LayerNorm = nn.LayerNorm(config.encoder_output_size, eps=config.layer_norm_eps)
            self.recompute_reversible = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        causal: bool,
        cache: Any,
        output_hidden_states: bool,
        mechanism_inputs: dict[str, Any],
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[Routing]]:
        """The last hidden states, every layer's (with the embeddings first) if asked, the routings."""
        if self.reversible:
            return self._two_streams(hidden_states, padding_mask, causal, cache, output_hidden_states,
                                     mechanism_inputs)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        routings = []
        for layer in self.layer:
            hidden_states, routing = run_layer(layer, hidden_states, padding_mask, causal, cache, mechanism_inputs)
            if routing is not None:
                routings.append(routing)
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
        return hidden_states, all_hidden_states, routings

    def run_until_exit(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        causal: bool,
        mechanism_inputs: dict[str, Any],
        exit_hook: ExitHook,
    ) -> list[Routing]:
        """Run the layers, each row until ``exit_hook`` lets it go; return the routings.

        After layer ``index`` the hook gets ``(index, hidden_states)`` of the rows still running and
        returns a bool per row, True for the rows that go on to the next layer; the rows it lets go run
        no further layer (PonderNet's early exit, ``ponder.py``). Mechanism inputs whose first
        dimension is the rows (a global-attention mask) are cut with them.
        """
        if self.reversible:
            raise ValueError("An early exit needs layers that run one at a time; reversible=True runs them as "
                             "two streams. Use a model with reversible=False.")
        routings = []
        for index, layer in enumerate(self.layer):
            hidden_states, routing = run_layer(layer, hidden_states, padding_mask, causal, None, mechanism_inputs)
            if routing is not None:
                routings.append(routing)
            keep = exit_hook(index, hidden_states)
            if not bool(keep.any()):
                break
            rows = hidden_states.shape[0]
            hidden_states = hidden_states[keep]
            padding_mask = padding_mask[keep] if padding_mask is not None else None
            mechanism_inputs = {
                name: value[keep] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows
                else value
                for name, value in mechanism_inputs.items()
            }
        return routings

    def _two_streams(self, hidden_states, padding_mask, causal, cache, output_hidden_states, mechanism_inputs):
        stream_1, stream_2, routings, layer_streams = run_two_streams(
            self.layer, hidden_states, padding_mask, causal, cache, mechanism_inputs,
            recompute=self.recompute_reversible, keep_layer_states=output_hidden_states,
        )
        last = self.LayerNorm(self._merge(stream_1, stream_2))
        all_hidden_states = None
        if output_hidden_states:
            all_hidden_states = [self._merge(hidden_states, hidden_states),
                                 *(self.LayerNorm(self._merge(*streams)) for streams in layer_streams[:-1]), last]
        return last, all_hidden_states, routings

    def _merge(self, stream_1: torch.Tensor, stream_2: torch.Tensor) -> torch.Tensor:
        """The two streams as one state: their mean, or side by side with ``reversible_merge="concat"``."""
        return torch.cat([stream_1, stream_2], dim=-1) if self.concatenate_streams else (stream_1 + stream_2) / 2


class EffzooPooler(nn.Module):
    """tanh(dense(first token)): BERT's pooler."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.encoder_output_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class EffzooPredictionHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm, before the vocabulary projection (BERT's)."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.encoder_output_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class EffzooLMPredictionHead(nn.Module):
    """Transform, then the decoder to the vocabulary; its weight is tied to the word embeddings.

    With ``lm_head_transform=False`` the decoder reads the encoder output itself (Reformer's LM head).
    """

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.transform = EffzooPredictionHeadTransform(config) if config.lm_head_transform else nn.Identity()
        decoder_input = config.hidden_size if config.lm_head_transform else config.encoder_output_size
        self.decoder = nn.Linear(decoder_input, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class EffzooLMHead(nn.Module):
    """The language-model head, named ``cls.predictions`` as in BERT."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__()
        self.predictions = EffzooLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class EffzooPreTrainedModel(PreTrainedModel):
    """Base of every effzoo model. A variant subclasses it to name its config and mechanism."""

    config_class = EffzooConfig
    #: The attention every layer uses; each variant's ``XPreTrainedModel`` sets it.
    mechanism_class: type[AttentionMechanism] | None = None
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    #: The units device maps and FSDP wrapping keep whole: the embeddings and every layer class.
    _no_split_modules = ["EffzooEmbeddings", "EffzooLayer", "EffzooMoELayer"]
    #: With ``reversible=True`` the encoder runs all its layers inside one autograd function that calls
    #: their blocks, never a layer's ``forward``, so hooks on a layer (FSDP's, accelerate's) never fire:
    #: the encoder is the unit instead.
    _reversible_no_split_modules = ["EffzooEmbeddings", "EffzooEncoder"]
    # Extra keyword inputs belong to the mechanism; Trainer must not send loss kwargs through them.
    accepts_loss_kwargs = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Transformers pins `config_class` on every subclass, so a variant class such as
        # FullModel(EffzooModel, FullPreTrainedModel) would inherit EffzooModel's pinned base
        # config. The class that names the mechanism (XPreTrainedModel) names the config too.
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__:
            if base.__dict__.get("mechanism_class") is not None:
                cls.config_class = base.__dict__["config_class"]
                break

    def __init__(self, config: EffzooConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        if config.reversible:
            self._no_split_modules = self._reversible_no_split_modules

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        if enable and self.config.reversible:
            raise ValueError(
                "Gradient checkpointing cannot be enabled on a model with reversible=True: reversible layers "
                "already recompute their activations in the backward pass. Leave gradient checkpointing off "
                "(no --gradient-checkpointing), or use a model with reversible=False."
            )
        super()._set_gradient_checkpointing(enable, *args, **kwargs)

    #: Called as ``save_hook(model, save_directory)`` before Transformers' save. The registry sets the
    #: one that writes the checkpoint's remote code and ``auto_map`` (``variants.register_all``); the
    #: copy of this module inside a checkpoint has none, so it saves as any remote-code model does.
    save_hook: ClassVar[Callable[..., None] | None] = None

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Transformers' save, after the registry's :attr:`save_hook`."""
        if type(self).save_hook is not None:
            type(self).save_hook(self, save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, plus each mechanism's own parameters (``reset_parameters``), the
        routers (normal(0, initializer_range)) and the halting units (see ``ponder.py``)."""
        super()._init_weights(module)
        # Transformers visits only modules holding tensors of their own: a mechanism's feature map is
        # reached as itself, a mechanism with buffers (LSH rotations) as the mechanism.
        if isinstance(module, (AttentionMechanism, FeatureMap)) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif isinstance(module, EffzooLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, AxialPositionWeights):
            for weight in module:
                init.normal_(weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, SwitchRouter):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, HaltingUnits):
            module.reset_parameters()


def output_flags(config: EffzooConfig, output_hidden_states: bool | None, output_attentions: bool | None,
                 output_router_logits: bool | None) -> tuple[bool, bool, bool]:
    """The three output switches of a forward call, each read from the config where the call leaves it None."""
    def resolve(value: bool | None, name: str) -> bool:
        return bool(getattr(config, name) if value is None else value)

    return (resolve(output_hidden_states, "output_hidden_states"), resolve(output_attentions, "output_attentions"),
            resolve(output_router_logits, "output_router_logits"))


def _positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position of each token among the real tokens of its row (left padding does not shift it)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


class EffzooModel(EffzooPreTrainedModel):
    """The bare encoder: embeddings, layers and pooler; outputs ``last_hidden_state`` and ``pooler_output``."""

    def __init__(
        self,
        config: EffzooConfig,
        add_pooling_layer: bool = True,
        mechanism_class: type[AttentionMechanism] | None = None,
    ) -> None:
        super().__init__(config)
        if mechanism_class is not None:
            self.mechanism_class = mechanism_class
        if self.mechanism_class is None:
            raise TypeError(
                f"{type(self).__name__} has no attention mechanism: use a variant's model class "
                "(for example FullModel) or AutoModel, not the shared base class."
            )
        self.embeddings = EffzooEmbeddings(config)
        self.encoder = EffzooEncoder(config, self.mechanism_class)
        self.pooler = EffzooPooler(config) if add_pooling_layer else None
        self.mechanism_input_names = keyword_inputs(self.mechanism_class) - BACKBONE_SUPPLIED_INPUTS
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooModelOutput:
        """Encode a batch. Extra keyword inputs go to the mechanism, which must declare them.

        ``output_hidden_states``, ``output_attentions`` and ``output_router_logits`` not given are read
        from the config, as in every Transformers model. The attention weights are the mechanism's
        (``AttentionMechanism.attention_weights_layout``): dense for exact attention, a sparse COO
        tensor of the attended pairs for the sparse patterns; the kernel family has none and says so.
        """
        output_hidden_states, output_attentions, output_router_logits = output_flags(
            self.config, output_hidden_states, output_attentions, output_router_logits
        )
        hidden_states, padding_mask, causal, past_key_values, use_cache = self.embed(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values, use_cache,
            mechanism_inputs,
        )
        attentions = None
        if output_attentions:
            self.mechanism_class.check_can_return_weights()
            attentions = mechanism_inputs[ATTENTION_WEIGHTS_SINK] = []
        hidden_states, all_hidden_states, routings = self.encoder(
            hidden_states, padding_mask, causal, past_key_values, output_hidden_states, mechanism_inputs
        )
        router = summarise_routing(routings) or {}
        return EffzooModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.pooler(hidden_states) if self.pooler is not None else None,
            **{CACHE_FIELD: past_key_values if use_cache else None},
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            aux_loss=router.get("aux_loss"),
            z_loss=router.get("z_loss"),
            router_logits=router.get("router_logits") if output_router_logits else None,
            dropped_tokens=router.get("dropped_tokens"),
        )

    def encode_until_exit(
        self,
        exit_hook: ExitHook,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **mechanism_inputs: Any,
    ) -> list[Routing]:
        """Embed and run the encoder with an early exit (:meth:`EffzooEncoder.run_until_exit`); the hook
        sees every layer's hidden states and the routings are returned."""
        hidden_states, padding_mask, causal, _, _ = self.embed(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, None, False, mechanism_inputs,
        )
        return self.encoder.run_until_exit(hidden_states, padding_mask, causal, mechanism_inputs, exit_hook)

    def embed(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        past_key_values: Any,
        use_cache: bool | None,
        mechanism_inputs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool, Any, bool]:
        """Check the inputs and embed them: (hidden states, padding mask or None, causal, cache, use_cache)."""
        batch, length = _input_shape(input_ids, inputs_embeds)
        self._check_mechanism_inputs(mechanism_inputs)
        causal = self.config.is_decoder
        use_cache = causal and (self.config.use_cache if use_cache is None else use_cache)
        if use_cache and past_key_values is None:
            past_key_values = self.mechanism_class.new_cache(self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        device = (input_ids if input_ids is not None else inputs_embeds).device
        if attention_mask is not None:
            attention_mask = _check_attention_mask(attention_mask, batch, length, past_length)
        if position_ids is None:
            if past_length + length > self.config.max_position_embeddings:
                raise _too_long(past_length + length, self.config.max_position_embeddings)
            if attention_mask is not None:
                position_ids = _positions_from_mask(attention_mask, length)
            else:
                position_ids = torch.arange(past_length, past_length + length, device=device).expand(batch, -1)
        elif int(position_ids.max()) >= self.config.max_position_embeddings:
            raise _too_long(int(position_ids.max()) + 1, self.config.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=device)

        hidden_states = self.embeddings(position_ids, token_type_ids, input_ids, inputs_embeds)
        # An all-real batch passes no mask, so the mechanism can take its fastest path.
        padding_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            padding_mask = attention_mask.bool()
        return hidden_states, padding_mask, causal, past_key_values, use_cache

    def _check_mechanism_inputs(self, mechanism_inputs: dict[str, Any]) -> None:
        unknown = sorted(set(mechanism_inputs) - self.mechanism_input_names)
        if unknown:
            accepted = sorted(self.mechanism_input_names) or ["none"]
            raise TypeError(
                f"{type(self).__name__}.forward() got unexpected keyword argument(s) {unknown}; "
                f"the {self.config.model_type} attention accepts these extra inputs: {accepted}."
            )


#: Mechanism inputs the backbone fills in itself, never the user.
BACKBONE_SUPPLIED_INPUTS = {"hidden_states"}


def _input_shape(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> tuple[int, int]:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None and input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, sequence_length), got {tuple(input_ids.shape)}; "
            "add a batch dimension with input_ids[None] for a single sequence."
        )
    if inputs_embeds is not None and inputs_embeds.dim() != 3:
        raise ValueError(
            f"inputs_embeds must have shape (batch, sequence_length, hidden_size), got {tuple(inputs_embeds.shape)}."
        )
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
    return int(shape[0]), int(shape[1])


def _check_attention_mask(attention_mask: torch.Tensor, batch: int, length: int, past_length: int) -> torch.Tensor:
    """The mask must cover the cached tokens and the new ones: (batch, past_length + length)."""
    expected = (batch, past_length + length)
    if tuple(attention_mask.shape) != expected:
        hint = f" (past {past_length} + new {length} tokens)" if past_length else ""
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected}{hint}: "
            "one 1/0 entry per token, 1 for real tokens and 0 for padding, as the tokenizer returns it."
        )
    return attention_mask


def _too_long(length: int, max_positions: int) -> ValueError:
    return ValueError(
        f"The input needs {length} positions but the model has max_position_embeddings={max_positions}. "
        f"Truncate the input to {max_positions} tokens, or extend the positions: "
        f"`effzoo convert SOURCE --to VARIANT --max-position-embeddings {length} --output DIR`."
    )
