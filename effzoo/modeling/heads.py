"""Task heads, written once for every variant (BERT's heads, with BERT's parameter names).

A variant declares e.g. ``class FullForMaskedLM(EffzooForMaskedLM, FullPreTrainedModel)``;
the head builds the shared backbone with that variant's mechanism.

With a mixture-of-experts backbone every head adds ``router_aux_loss_coef`` × the balance loss
and ``router_z_loss_coef`` × the z-loss to ``loss`` when labels are given, and returns them (and
the router logits when ``output_router_logits``). With ``ponder=True`` the sequence-classification
and multiple-choice heads are PonderNet's (see ``ponder.py``); the other heads refuse it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from torch.nn import functional as F
from transformers import GenerationMixin
from transformers.utils.generic import can_return_tuple

from ..configs.base import EffzooConfig
from .backbone import EffzooLMHead, EffzooModel, EffzooPreTrainedModel, output_flags
from .global_tokens import default_global_attention_mask
from .moe import summarise_routing
from .outputs import (
    CACHE_FIELD,
    EffzooCausalLMOutput,
    EffzooMaskedLMOutput,
    EffzooModelOutput,
    EffzooMultipleChoiceOutput,
    EffzooQuestionAnsweringOutput,
    EffzooSequenceClassifierOutput,
    EffzooTokenClassifierOutput,
)
from .ponder import EarlyExit, HaltingUnits, Readout, halting_distribution, ponder_loss

_TIED_LM_WEIGHTS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


#: The keyword under which ``generate()`` hands the decoding cache to ``forward``: ``cache`` from
#: Transformers 5.24 on, ``past_key_values`` before.
GENERATION_CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


def router_fields(outputs: EffzooModelOutput) -> dict[str, Any]:
    """The router's outputs a head passes on (all None without experts)."""
    return {"aux_loss": outputs.aux_loss, "z_loss": outputs.z_loss, "router_logits": outputs.router_logits}


def reported_fields(outputs: EffzooModelOutput) -> dict[str, Any]:
    """What every head passes on from the encoder besides its predictions: hidden states, attentions, router."""
    return {"hidden_states": outputs.hidden_states, "attentions": outputs.attentions, **router_fields(outputs)}


class EffzooHead(EffzooPreTrainedModel):
    """Common plumbing of the heads: the backbone under ``bert`` and the call into it."""

    add_pooling_layer = True
    #: Whether the head implements PonderNet's adaptive depth (``config.ponder``).
    supports_ponder = False
    #: The tokens the head makes global when the mechanism takes a ``global_attention_mask`` and the
    #: caller gives none, as Transformers' Longformer heads do (``global_tokens.py``).
    default_global_tokens: str | None = None

    def __init__(self, config: EffzooConfig) -> None:
        if config.ponder and not self.supports_ponder:
            raise ValueError(
                f"ponder=True is not supported by {type(self).__name__}: PonderNet's adaptive depth needs one "
                "prediction per example, which the ForSequenceClassification and ForMultipleChoice heads make. "
                "Set ponder=False for this head."
            )
        super().__init__(config)
        self.bert = EffzooModel(config, add_pooling_layer=self.add_pooling_layer, mechanism_class=self.mechanism_class)

    def encode(self, **inputs: Any) -> EffzooModelOutput:
        return self.bert(**inputs, **self.default_global_inputs(inputs), return_dict=True)

    def default_global_inputs(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"global_attention_mask": …}`` with this head's default global tokens (``global_tokens.py``)
        where the mechanism takes one, the head has a default and ``inputs`` have none; else ``{}``."""
        if (self.default_global_tokens is None or self.config.is_decoder
                or inputs.get("global_attention_mask") is not None
                or "global_attention_mask" not in self.bert.mechanism_input_names):
            return {}
        input_ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            return {}
        mask = default_global_attention_mask(
            self.default_global_tokens, self.config, input_ids, inputs.get("attention_mask"),
            inputs.get("token_type_ids"), tuple(reference.shape[:2]), reference.device,
        )
        return {} if mask is None else {"global_attention_mask": mask}

    def with_router_losses(self, loss: torch.Tensor | None, outputs: EffzooModelOutput) -> torch.Tensor | None:
        """``loss`` plus the weighted router losses of a mixture-of-experts backbone (Switch's total loss)."""
        if loss is None or outputs.aux_loss is None:
            return loss
        return loss + self.config.router_aux_loss_coef * outputs.aux_loss + self.config.router_z_loss_coef * outputs.z_loss

    def classifier_dropout(self) -> nn.Dropout:
        dropout = self.config.classifier_dropout
        return nn.Dropout(self.config.hidden_dropout_prob if dropout is None else dropout)


class _LanguageModelHead(EffzooHead):
    """Shared by the masked and the causal language model: ``cls.predictions`` tied to the embeddings."""

    add_pooling_layer = False
    _tied_weights_keys = _TIED_LM_WEIGHTS

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.cls = EffzooLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias


class EffzooForMaskedLM(_LanguageModelHead):
    """Masked language modelling (BERT's MLM head); ``labels`` = -100 where not masked."""

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooMaskedLMOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, output_router_logits=output_router_logits, **mechanism_inputs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.reshape(-1))
        return EffzooMaskedLMOutput(loss=self.with_router_losses(loss, outputs), logits=logits,
                                    **reported_fields(outputs))


class EffzooForCausalLM(_LanguageModelHead, GenerationMixin):
    """Left-to-right language modelling with ``generate()``; attention is made causal.

    Only variants whose mechanism supports causality declare this head.
    """

    def __init__(self, config: EffzooConfig) -> None:
        if not self.mechanism_class.supports_causal:
            raise TypeError(f"{self.mechanism_class.__name__} cannot be causal, so it has no causal LM head.")
        config.is_decoder = True  # a causal LM is a decoder: every layer masks the future
        super().__init__(config)

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict, *args: Any,
                                      **kwargs: Any) -> None:
        """``generate()`` would build a ``DynamicCache``; the mechanism decides what it keeps instead
        (every key and value for exact attention, a recurrent state for kernel attention, ...)."""
        if (model_kwargs.get(GENERATION_CACHE_KWARG) is None and model_kwargs.get("past_key_values") is None
                and generation_config.use_cache is not False):
            model_kwargs[GENERATION_CACHE_KWARG] = self.mechanism_class.new_cache(self.config)
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int = 0,
        cache: Any = None,
        **mechanism_inputs: Any,
    ) -> EffzooCausalLMOutput:
        """``cache`` is the decoding cache's name from Transformers 5.24 on, ``past_key_values`` before it."""
        past_key_values = cache if cache is not None else past_key_values
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, past_key_values=past_key_values,
            use_cache=False if labels is not None else use_cache, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, output_router_logits=output_router_logits, **mechanism_inputs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.cls(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return EffzooCausalLMOutput(
            loss=self.with_router_losses(loss, outputs), logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            **reported_fields(outputs),
        )


def problem_type(config: EffzooConfig, labels: torch.Tensor) -> str:
    """BERT's rule, recorded in the config: regression for one label, single-label for integer labels,
    else multi-label."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    return config.problem_type


def sequence_classification_loss(config: EffzooConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    num_labels = config.num_labels
    problem_type(config, labels)
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return MSELoss()(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.reshape(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


def per_example_classification_loss(config: EffzooConfig, logits: torch.Tensor, labels: torch.Tensor
                                    ) -> torch.Tensor:
    """The loss of :func:`sequence_classification_loss` for each example, not averaged over them."""
    kind = problem_type(config, labels)
    batch = logits.shape[0]
    if kind == "regression":
        return (logits.reshape(batch, -1) - labels.to(logits.dtype).reshape(batch, -1)).square().mean(-1)
    if kind == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1), reduction="none")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1)


class _PonderHead(EffzooHead):
    """A head with one prediction per example, which can be PonderNet's (``config.ponder``, ``ponder.py``).

    Training (``model.train()``) runs every layer and, given labels, returns PonderNet's loss; the
    logits are the last layer's. Inference (``model.eval()``) runs each example until it halts and
    returns that layer's prediction, the task loss of those predictions, and ``layers_used``.
    """

    supports_ponder = True

    def add_halting_units(self, config: EffzooConfig) -> None:
        if config.ponder:
            self.halting = HaltingUnits(config)

    def layer_losses(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of each example's prediction (examples,)."""
        raise NotImplementedError

    def task_loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ponder(self, inputs: dict[str, Any], labels: torch.Tensor | None, output_hidden_states: bool | None,
               output_attentions: bool | None, output_router_logits: bool | None, mechanism_inputs: dict[str, Any],
               readout: Readout, rows_per_example: int = 1) -> dict[str, Any]:
        """The output fields of PonderNet's forward; ``readout`` maps a layer's hidden states to
        (predictions per example, halting features per example)."""
        config = self.config
        output_hidden_states, output_attentions, output_router_logits = output_flags(
            config, output_hidden_states, output_attentions, output_router_logits
        )
        if self.training:
            outputs = self.encode(**inputs, output_hidden_states=True, output_attentions=output_attentions,
                                  output_router_logits=output_router_logits, **mechanism_inputs)
            readouts = [readout(state) for state in outputs.hidden_states[1:]]
            predictions = torch.stack([prediction for prediction, _ in readouts], dim=1)
            halting = torch.stack([self.halting(index, features) for index, (_, features) in enumerate(readouts)], 1)
            probabilities = halting_distribution(halting)
            loss = None
            if labels is not None:
                losses = torch.stack([self.layer_losses(predictions[:, n], labels)
                                      for n in range(predictions.shape[1])], dim=1)
                loss = ponder_loss(losses, probabilities, config.ponder_lambda_prior, config.ponder_beta)
            return {
                "loss": self.with_router_losses(loss, outputs), "logits": predictions[:, -1],
                "hidden_states": outputs.hidden_states if output_hidden_states else None,
                "attentions": outputs.attentions, **router_fields(outputs),
                "halting_probabilities": probabilities,
                "layers_used": torch.full((predictions.shape[0],), predictions.shape[1], dtype=torch.long,
                                          device=predictions.device),
            }

        if output_hidden_states or output_attentions:
            raise ValueError(
                "output_hidden_states=True and output_attentions=True are not available with ponder=True in "
                "evaluation mode: each example stops at its own layer. Call model.train() to run every layer, or "
                "leave them off (in the call and in the config)."
            )
        mechanism_inputs = {**mechanism_inputs, **self.default_global_inputs({**inputs, **mechanism_inputs})}
        rows = (inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]).shape[0]
        early_exit = EarlyExit(readout, self.halting, rows // rows_per_example, self.halting.weight.device,
                               rows_per_example=rows_per_example, threshold=config.ponder_threshold,
                               sample=config.ponder_sample)
        router = summarise_routing(self.bert.encode_until_exit(early_exit, **inputs, **mechanism_inputs)) or {}
        predictions = early_exit.predictions
        loss = self.task_loss(predictions, labels) if labels is not None else None
        if loss is not None and router:
            loss = loss + config.router_aux_loss_coef * router["aux_loss"] + config.router_z_loss_coef * router["z_loss"]
        return {
            "loss": loss, "logits": predictions, "aux_loss": router.get("aux_loss"), "z_loss": router.get("z_loss"),
            "router_logits": router.get("router_logits") if output_router_logits else None,
            "halting_probabilities": early_exit.probabilities, "layers_used": early_exit.layers_used,
        }


class EffzooForSequenceClassification(_PonderHead):
    """Classification or regression on the pooled first token (``config.problem_type`` as in BERT)."""

    default_global_tokens = "first"

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.add_halting_units(config)
        self.post_init()

    def readout(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.bert.pooler(hidden_states)
        return self.classifier(self.dropout(pooled)), pooled

    def layer_losses(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_example_classification_loss(self.config, predictions, labels)

    def task_loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sequence_classification_loss(self.config, predictions, labels)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooSequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  "position_ids": position_ids, "inputs_embeds": inputs_embeds}
        if self.config.ponder:
            return EffzooSequenceClassifierOutput(**self.ponder(
                inputs, labels, output_hidden_states, output_attentions, output_router_logits, mechanism_inputs,
                self.readout))
        outputs = self.encode(**inputs, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                              output_router_logits=output_router_logits, **mechanism_inputs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = sequence_classification_loss(self.config, logits, labels) if labels is not None else None
        return EffzooSequenceClassifierOutput(loss=self.with_router_losses(loss, outputs), logits=logits,
                                              **reported_fields(outputs))


class EffzooForTokenClassification(EffzooHead):
    """A label per token (named entities, tagging); ``labels`` = -100 where ignored."""

    add_pooling_layer = False

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.encoder_output_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooTokenClassifierOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, output_router_logits=output_router_logits, **mechanism_inputs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.reshape(-1))
        return EffzooTokenClassifierOutput(loss=self.with_router_losses(loss, outputs), logits=logits,
                                           **reported_fields(outputs))


class EffzooForQuestionAnswering(EffzooHead):
    """Extractive QA: start and end logits per token (``qa_outputs`` as in BERT)."""

    add_pooling_layer = False
    default_global_tokens = "question"

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.qa_outputs = nn.Linear(config.encoder_output_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooQuestionAnsweringOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, output_router_logits=output_router_logits, **mechanism_inputs,
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are clamped to an ignored index, as in BERT.
            ignored_index = start_logits.size(1)
            start_positions = start_positions.view(-1).clamp(0, ignored_index)
            end_positions = end_positions.view(-1).clamp(0, ignored_index)
            loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
            loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
        return EffzooQuestionAnsweringOutput(
            loss=self.with_router_losses(loss, outputs), start_logits=start_logits, end_logits=end_logits,
            **reported_fields(outputs),
        )


class EffzooForMultipleChoice(_PonderHead):
    """Scores each of ``num_choices`` candidates: inputs of shape (batch, num_choices, length).

    With ``ponder=True`` a question halts as a whole: its halting features are the mean of its
    choices' pooled states.
    """

    default_global_tokens = "first"

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.add_halting_units(config)
        self.post_init()

    def readout(self, hidden_states: torch.Tensor, num_choices: int) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.bert.pooler(hidden_states)
        scores = self.classifier(self.dropout(pooled)).view(-1, num_choices)
        return scores, pooled.view(scores.shape[0], num_choices, -1).mean(dim=1)

    def layer_losses(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(predictions, labels, reduction="none")

    def task_loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return CrossEntropyLoss()(predictions, labels)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_router_logits: bool | None = None,
        **mechanism_inputs: Any,
    ) -> EffzooMultipleChoiceOutput:
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3:
            raise ValueError(
                "Multiple choice inputs must have shape (batch, num_choices, sequence_length); "
                f"got {None if reference is None else tuple(reference.shape)}."
            )
        num_choices = reference.shape[1]

        def flat(x: torch.Tensor | None, trailing: int = 1) -> torch.Tensor | None:
            return None if x is None else x.reshape(-1, *x.shape[x.dim() - trailing :])

        inputs = {"input_ids": flat(input_ids), "attention_mask": flat(attention_mask),
                  "token_type_ids": flat(token_type_ids), "position_ids": flat(position_ids),
                  "inputs_embeds": flat(inputs_embeds, trailing=2)}
        mechanism_inputs = {name: flat(value) for name, value in mechanism_inputs.items()}
        if self.config.ponder:
            return EffzooMultipleChoiceOutput(**self.ponder(
                inputs, labels, output_hidden_states, output_attentions, output_router_logits, mechanism_inputs,
                lambda states: self.readout(states, num_choices), rows_per_example=num_choices))
        outputs = self.encode(**inputs, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                              output_router_logits=output_router_logits, **mechanism_inputs)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = CrossEntropyLoss()(logits, labels) if labels is not None else None
        return EffzooMultipleChoiceOutput(loss=self.with_router_losses(loss, outputs), logits=logits,
                                          **reported_fields(outputs))
