"""Task heads, written once for every variant (BERT's heads, with BERT's parameter names).

A variant declares e.g. ``class FullForMaskedLM(EffzooForMaskedLM, FullPreTrainedModel)``;
the head builds the shared backbone with that variant's mechanism.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import GenerationMixin
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils.generic import can_return_tuple

from ..configs.base import EffzooConfig
from .backbone import EffzooLMHead, EffzooModel, EffzooPreTrainedModel

_TIED_LM_WEIGHTS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


class EffzooHead(EffzooPreTrainedModel):
    """Common plumbing of the heads: the backbone under ``bert`` and the call into it."""

    add_pooling_layer = True

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.bert = EffzooModel(config, add_pooling_layer=self.add_pooling_layer, mechanism_class=self.mechanism_class)

    def encode(self, **inputs: Any) -> BaseModelOutputWithPoolingAndCrossAttentions:
        return self.bert(**inputs, return_dict=True)

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
        **mechanism_inputs: Any,
    ) -> MaskedLMOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states, **mechanism_inputs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


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
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            model_kwargs["past_key_values"] = self.mechanism_class.new_cache(self.config)
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
        logits_to_keep: int = 0,
        **mechanism_inputs: Any,
    ) -> CausalLMOutputWithCrossAttentions:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, past_key_values=past_key_values,
            use_cache=False if labels is not None else use_cache,
            output_hidden_states=output_hidden_states, **mechanism_inputs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.cls(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )


def sequence_classification_loss(config: EffzooConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return MSELoss()(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class EffzooForSequenceClassification(EffzooHead):
    """Classification or regression on the pooled first token (``config.problem_type`` as in BERT)."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
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
        **mechanism_inputs: Any,
    ) -> SequenceClassifierOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states, **mechanism_inputs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = sequence_classification_loss(self.config, logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class EffzooForTokenClassification(EffzooHead):
    """A label per token (named entities, tagging); ``labels`` = -100 where ignored."""

    add_pooling_layer = False

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
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
        **mechanism_inputs: Any,
    ) -> TokenClassifierOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states, **mechanism_inputs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class EffzooForQuestionAnswering(EffzooHead):
    """Extractive QA: start and end logits per token (``qa_outputs`` as in BERT)."""

    add_pooling_layer = False

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
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
        **mechanism_inputs: Any,
    ) -> QuestionAnsweringModelOutput:
        outputs = self.encode(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states, **mechanism_inputs,
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
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states
        )


class EffzooForMultipleChoice(EffzooHead):
    """Scores each of ``num_choices`` candidates: inputs of shape (batch, num_choices, length)."""

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, 1)
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
        **mechanism_inputs: Any,
    ) -> MultipleChoiceModelOutput:
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3:
            raise ValueError(
                "Multiple choice inputs must have shape (batch, num_choices, sequence_length); "
                f"got {None if reference is None else tuple(reference.shape)}."
            )
        num_choices = reference.shape[1]

        def flat(x: torch.Tensor | None, trailing: int = 1) -> torch.Tensor | None:
            return None if x is None else x.reshape(-1, *x.shape[x.dim() - trailing :])

        outputs = self.encode(
            input_ids=flat(input_ids), attention_mask=flat(attention_mask), token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids), inputs_embeds=flat(inputs_embeds, trailing=2),
            output_hidden_states=output_hidden_states,
            **{name: flat(value) for name, value in mechanism_inputs.items()},
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = CrossEntropyLoss()(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
