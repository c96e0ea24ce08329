"""The fine-tuning tasks: the columns each needs (``required``), how it tokenizes, its head, collator, metrics.

One small class per task, so that ``finetune`` itself is task-agnostic. Columns are named
by the user (``--text-column`` and friends) with the usual data-set names as defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import ClassLabel, DatasetDict, Sequence
from transformers import (
    DataCollatorForMultipleChoice,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
)

from .metrics import load_metric


@dataclass
class Columns:
    """Column names in the user's data."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    tokens: str = "tokens"
    choices: str = "choices"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"


@dataclass
class PreparedTask:
    """Tokenized splits, the keyword arguments of the head, the collator and the metric function."""

    data: DatasetDict
    model_kwargs: dict[str, Any]
    collator: Any
    compute_metrics: Any
    metric_for_best_model: str
    truncated: int


def _label_names(data: DatasetDict, column: str) -> list[str] | None:
    feature = data["train"].features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        return list(feature.feature.names)
    return None


def _labels_from_values(data: DatasetDict, column: str, flatten: bool = False) -> list[str]:
    """The label set of columns of plain ints or strings: sorted, from the train split."""
    values = data["train"][column]
    if flatten:
        values = [value for row in values for value in row]
    return [str(value) for value in sorted(set(values))]


def _check_labels(data: DatasetDict, column: str, label2id: dict[str, int], flatten: bool = False) -> None:
    for split, part in data.items():
        values = part[column]
        if flatten:
            values = [value for row in values for value in row]
        unknown = sorted({str(value) for value in values} - set(label2id))
        if unknown:
            raise ValueError(
                f"Labels {unknown[:10]} in the {split} split are not among the declared labels "
                f"{sorted(label2id)} (taken from the train split)."
            )


def _map_counting_truncation(data: DatasetDict, encode: Any, max_length: int) -> tuple[DatasetDict, int]:
    """Tokenize every split with ``encode`` (which records each row's untruncated ``full_length``);
    return the tokenized splits and how many rows ``max_length`` cut."""
    tokenized = data.map(encode, batched=True, remove_columns=data["train"].column_names)
    truncated = sum(sum(length > max_length for length in part["full_length"]) for part in tokenized.values())
    return tokenized.remove_columns("full_length"), truncated


class SequenceClassification:
    """Single-label, multi-label (a list of labels per row) or regression (float labels)."""

    auto_class = "AutoModelForSequenceClassification"
    pipeline_task = "text-classification"  # the model-index task type
    name = "sequence-classification"

    @staticmethod
    def required(columns: Columns) -> tuple[str, ...]:
        return (columns.text, columns.label) + ((columns.text_pair,) if columns.text_pair else ())

    def prepare(self, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: Columns,
                max_length: int) -> PreparedTask:
        first = data["train"][0][columns.label]
        if isinstance(first, float):
            problem_type, names = "regression", None
        elif isinstance(first, list):
            problem_type = "multi_label_classification"
            names = _label_names(data, columns.label) or _labels_from_values(data, columns.label, flatten=True)
        else:
            problem_type = "single_label_classification"
            names = _label_names(data, columns.label) or _labels_from_values(data, columns.label)
        label2id = {name: index for index, name in enumerate(names or [])}
        if names and _label_names(data, columns.label) is None:
            _check_labels(data, columns.label, label2id, flatten=problem_type == "multi_label_classification")

        def encode(batch: dict[str, list]) -> dict[str, list]:
            pair = batch[columns.text_pair] if columns.text_pair else None
            full = tokenizer(batch[columns.text], pair, verbose=False)
            encoded = tokenizer(batch[columns.text], pair, truncation=True, max_length=max_length)
            encoded["full_length"] = [len(ids) for ids in full["input_ids"]]
            encoded["labels"] = [self._label(value, problem_type, label2id) for value in batch[columns.label]]
            return encoded

        tokenized, truncated = _map_counting_truncation(data, encode, max_length)
        model_kwargs = {"problem_type": problem_type, "num_labels": len(names) if names else 1}
        if names:
            model_kwargs.update(id2label=dict(enumerate(names)), label2id=label2id)
        metrics = _regression_metrics if problem_type == "regression" else (
            _multi_label_metrics if problem_type == "multi_label_classification" else _classification_metrics
        )
        best = "mse" if problem_type == "regression" else "f1"
        return PreparedTask(tokenized, model_kwargs, DataCollatorWithPadding(tokenizer), metrics, best, truncated)

    @staticmethod
    def _label(value: Any, problem_type: str, label2id: dict[str, int]) -> Any:
        if problem_type == "regression":
            return float(value)
        if problem_type == "multi_label_classification":
            hot = [0.0] * len(label2id)
            for item in value:
                hot[label2id[str(item)] if str(item) in label2id else int(item)] = 1.0
            return hot
        return label2id[str(value)] if str(value) in label2id else int(value)


class TokenClassification:
    """A label per word (``tokens`` + a list-of-labels column); sub-words after the first are ignored."""

    auto_class = "AutoModelForTokenClassification"
    pipeline_task = "token-classification"  # the model-index task type
    name = "token-classification"

    @staticmethod
    def required(columns: Columns) -> tuple[str, ...]:
        return (columns.tokens, columns.label)

    def prepare(self, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: Columns,
                max_length: int) -> PreparedTask:
        names = _label_names(data, columns.label) or _labels_from_values(data, columns.label, flatten=True)
        label2id = {name: index for index, name in enumerate(names)}
        if _label_names(data, columns.label) is None:
            _check_labels(data, columns.label, label2id, flatten=True)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(batch[columns.tokens], is_split_into_words=True, truncation=True, max_length=max_length)
            full = tokenizer(batch[columns.tokens], is_split_into_words=True, verbose=False)
            encoded["full_length"] = [len(ids) for ids in full["input_ids"]]
            encoded["labels"] = []
            for row, word_labels in enumerate(batch[columns.label]):
                previous, labels = None, []
                for word in encoded.word_ids(row):
                    value = word_labels[word] if word is not None else None
                    keep = word is not None and word != previous
                    labels.append(label2id.get(str(value), value) if keep else -100)
                    previous = word
                encoded["labels"].append(labels)
            return encoded

        tokenized, truncated = _map_counting_truncation(data, encode, max_length)
        model_kwargs = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": label2id}
        return PreparedTask(tokenized, model_kwargs, DataCollatorForTokenClassification(tokenizer),
                            _token_metrics, "f1", truncated)


class MultipleChoice:
    """A text (``question``) and a list of candidate answers (``choices``); the label is the right one's index."""

    auto_class = "AutoModelForMultipleChoice"
    pipeline_task = "multiple-choice"  # the model-index task type
    name = "multiple-choice"

    @staticmethod
    def required(columns: Columns) -> tuple[str, ...]:
        return (columns.question, columns.choices, columns.label)

    def prepare(self, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: Columns,
                max_length: int) -> PreparedTask:

        def encode(batch: dict[str, list]) -> dict[str, list]:
            firsts = [q for q, choices in zip(batch[columns.question], batch[columns.choices]) for _ in choices]
            seconds = [choice for choices in batch[columns.choices] for choice in choices]
            flat = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
            full = tokenizer(firsts, seconds, verbose=False)
            encoded: dict[str, list] = {key: [] for key in flat}
            encoded["full_length"] = []
            start = 0
            for choices in batch[columns.choices]:
                end = start + len(choices)
                for key in flat:
                    encoded[key].append(flat[key][start:end])
                encoded["full_length"].append(max(len(ids) for ids in full["input_ids"][start:end]))
                start = end
            encoded["labels"] = [int(label) for label in batch[columns.label]]
            return encoded

        tokenized, truncated = _map_counting_truncation(data, encode, max_length)
        return PreparedTask(tokenized, {}, DataCollatorForMultipleChoice(tokenizer), _classification_metrics,
                            "accuracy", truncated)


class QuestionAnswering:
    """Extractive QA in SQuAD's format: ``question``, ``context``, ``answers`` {text, answer_start}.

    Long contexts are cut into windows (stride max_length/4); a window without the answer
    points at the first token. Evaluation scores the predicted start and end tokens per window
    (exact match of the span), not the text-level SQuAD F1.
    """

    auto_class = "AutoModelForQuestionAnswering"
    pipeline_task = "question-answering"  # the model-index task type
    name = "question-answering"

    @staticmethod
    def required(columns: Columns) -> tuple[str, ...]:
        return (columns.question, columns.context, columns.answers)

    def prepare(self, data: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: Columns,
                max_length: int) -> PreparedTask:

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                batch[columns.question], batch[columns.context], truncation="only_second", max_length=max_length,
                stride=max_length // 4, return_overflowing_tokens=True, return_offsets_mapping=True,
            )
            starts, ends = [], []
            for window, offsets in enumerate(encoded["offset_mapping"]):
                answer = batch[columns.answers][encoded["overflow_to_sample_mapping"][window]]
                char_start = answer["answer_start"][0]
                char_end = char_start + len(answer["text"][0])
                context = [i for i, s in enumerate(encoded.sequence_ids(window)) if s == 1]
                first, last = context[0], context[-1]
                if offsets[first][0] > char_start or offsets[last][1] < char_end:
                    starts.append(0)
                    ends.append(0)
                    continue
                starts.append(next(i for i in range(first, last + 1) if offsets[i][1] > char_start))
                ends.append(next(i for i in range(last, first - 1, -1) if offsets[i][0] < char_end))
            encoded["start_positions"], encoded["end_positions"] = starts, ends
            encoded.pop("offset_mapping")
            encoded.pop("overflow_to_sample_mapping")
            return encoded

        tokenized = data.map(encode, batched=True, remove_columns=data["train"].column_names)
        truncated = sum(len(part) for part in tokenized.values()) - sum(len(part) for part in data.values())
        return PreparedTask(tokenized, {}, DataCollatorWithPadding(tokenizer), _span_metrics, "exact_match", truncated)


TASKS = {task.name: task for task in (SequenceClassification(), TokenClassification(), MultipleChoice(),
                                      QuestionAnswering())}


def get_task(name: str):
    """The task called ``name``; a ValueError lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)}.")
    return TASKS[name]


def _classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, axis=-1)
    return {
        **load_metric("accuracy").compute(predictions=predicted, references=prediction.label_ids),
        **load_metric("f1").compute(predictions=predicted, references=prediction.label_ids, average="macro"),
    }


def _multi_label_metrics(prediction: EvalPrediction) -> dict[str, float]:
    predicted = (prediction.predictions > 0).astype(int).ravel()
    references = prediction.label_ids.astype(int).ravel()
    return {  # label-wise: each (example, label) decision counts once
        **load_metric("accuracy").compute(predictions=predicted, references=references),
        **load_metric("f1").compute(predictions=predicted, references=references, average="binary"),
    }


def _regression_metrics(prediction: EvalPrediction) -> dict[str, float]:
    return load_metric("mse").compute(predictions=prediction.predictions.ravel(),
                                      references=prediction.label_ids.ravel())


def _token_metrics(prediction: EvalPrediction) -> dict[str, float]:
    keep = prediction.label_ids != -100
    predicted = np.argmax(prediction.predictions, axis=-1)[keep]
    references = prediction.label_ids[keep]
    return {
        **load_metric("accuracy").compute(predictions=predicted, references=references),
        **load_metric("f1").compute(predictions=predicted, references=references, average="macro"),
    }


def _span_metrics(prediction: EvalPrediction) -> dict[str, float]:
    start_logits, end_logits = prediction.predictions[:2]
    start_positions, end_positions = prediction.label_ids
    exact = (np.argmax(start_logits, -1) == start_positions) & (np.argmax(end_logits, -1) == end_positions)
    return {"exact_match": float(np.mean(exact))}
