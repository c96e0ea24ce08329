"""``effzoo card``: a checkpoint's model card (``README.md``), from what its folder records.

The metadata is built with ``huggingface_hub.ModelCardData``: ``library_name: transformers``,
tags (``effzoo`` and the variant), the pipeline tag of the saved head, the licence inherited
from the source, ``base_model`` (the source, when it is a Hub id), the training data sets, and
as ``model-index`` the measured results: the evaluation results and the fidelity to the teacher.
The text is ``effzoo/hub/templates/model_card.md`` (Jinja) filled with the variant, its attention
mechanism and paper, the source, the training, the results, the fidelity and the speed figures,
mostly read from the folder's ``effzoo_provenance.json`` (see :mod:`effzoo.checkpoints.provenance`),
and a usage snippet that runs the saved head on example text.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..checkpoints.files import CARD_FILE
from ..checkpoints.licence import is_hub_id, source_license
from ..checkpoints.provenance import read_provenance
from ..variants import Variant
from .checkpoint import read_checkpoint

#: The card template, shipped inside the package so that an installed effzoo can write cards.
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"

#: The Auto class of the saved head -> the card's ``pipeline_tag`` (the Hub's widget and filter).
PIPELINE_TAG_OF_AUTO_CLASS = {
    "AutoModel": "feature-extraction",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
}

#: The usage snippet's example: the tokenizer's text arguments for the head, and the output it prints.
USAGE_OF_AUTO_CLASS = {
    "AutoModel": ('["Efficient attention reads long documents.", "It scales to many tokens."], padding=True',
                  "last_hidden_state"),
    "AutoModelForQuestionAnswering": ('"What does efficient attention read?", "It reads long documents."',
                                      "start_logits"),
    # One question with two choices: the head takes (batch, choices, length), the snippet adds the batch axis.
    "AutoModelForMultipleChoice": ('["Efficient attention reads"] * 2, ["long documents.", "nothing."], padding=True',
                                   "logits"),
}
_USAGE_OF_OTHER_HEADS = (USAGE_OF_AUTO_CLASS["AutoModel"][0], "logits")

#: The fidelity metrics that become ``model-index`` entries (``num_texts`` is a count, not a measure).
FIDELITY_METRICS = ("token_cosine", "sentence_cosine", "similarity_spearman")


def write_model_card(
    checkpoint_dir: str | Path,
    *,
    model_name: str | None = None,
    source: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    results: list[dict[str, Any]] | None = None,
    fidelity: dict[str, Any] | None = None,
    speed: list[dict[str, Any]] | None = None,
    license: str | None = None,
    intended_use: str | None = None,
    limitations: str | None = None,
    overwrite: bool = False,
    template: str | Path = TEMPLATE,
) -> Path:
    """Write ``README.md`` into an effzoo checkpoint folder and return its path.

    ``source``, ``training``, ``results``, ``fidelity`` and ``speed`` have the shapes of the
    provenance sections (:mod:`effzoo.checkpoints.provenance`); each one given replaces the recorded one. The
    licence is ``license``, else the one recorded for the source, else the one in the source's
    own card when it is on this machine. ``model_name`` (default: the folder's name) titles the
    card and names the model in ``model-index``; give the Hub repo id. Raises ValueError when the
    folder is not an effzoo checkpoint, when a card exists and ``overwrite`` is false, or when a
    result is not a valid ``huggingface_hub.EvalResult``.
    """
    directory = Path(checkpoint_dir)
    config, variant = read_checkpoint(directory)
    path = directory / CARD_FILE
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    given = {"source": source, "training": training, "results": results, "fidelity": fidelity, "speed": speed}
    provenance = read_provenance(directory) | {key: value for key, value in given.items() if value is not None}
    source = provenance.get("source") or {}
    training = provenance.get("training") or {}
    results = provenance.get("results") or []
    speed = provenance.get("speed") or []
    model_name = model_name or directory.resolve().name
    architecture = (config.get("architectures") or [variant.model_classes["AutoModel"].__name__])[0]
    auto_class = _auto_class(variant, architecture)
    mechanism = variant.model_classes["AutoModel"].mechanism_class
    fidelity = provenance.get("fidelity") or {}
    eval_results = _eval_results(results) + _fidelity_results(fidelity)
    usage_text, usage_output = USAGE_OF_AUTO_CLASS.get(auto_class, _USAGE_OF_OTHER_HEADS)

    card_data = ModelCardData(
        library_name="transformers",
        license=license or source.get("license") or source_license(source.get("id")),
        base_model=source["id"] if is_hub_id(source.get("id")) else None,
        datasets=training.get("datasets") or None,
        tags=["effzoo", variant.name],
        pipeline_tag=PIPELINE_TAG_OF_AUTO_CLASS.get(auto_class),
        # model_name only names the model in model-index; alone it would be a stray metadata key.
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        variant=variant,
        # A mechanism's docstring opens with its formula and paper (DESIGN.md, "Naming and style").
        mechanism={"name": mechanism.__name__, "summary": inspect.getdoc(mechanism).splitlines()[0]},
        config=config,
        architecture=architecture,
        auto_class=auto_class,
        source=source,
        training=training,
        results=results,
        fidelity=fidelity,
        usage={"text": usage_text, "output": usage_output, "choices": auto_class == "AutoModelForMultipleChoice"},
        speed=speed,
        speed_columns=list(dict.fromkeys(column for row in speed for column in row)),
        intended_use=intended_use,
        limitations=limitations,
    )
    card.save(path)
    return path


def _eval_results(entries: list[dict[str, Any]]) -> list[EvalResult]:
    try:
        return [EvalResult(**entry) for entry in entries]
    except TypeError as error:
        raise ValueError(
            "Each evaluation result takes the keyword arguments of huggingface_hub.EvalResult: task_type, "
            "dataset_type, dataset_name, metric_type, metric_value, and optional ones such as dataset_split; "
            f"{error}."
        ) from error


def _auto_class(variant: Variant, architecture: str) -> str:
    """The Auto class of the saved head, matched by the head's part of the class name ("ForMaskedLM"), so
    that checkpoints saved under a variant's former class names (``BigBirdForMaskedLM``) still match."""
    head = architecture.rpartition("For")[2] if "For" in architecture else ""
    for auto_name, model_class in variant.model_classes.items():
        name = model_class.__name__
        if name == architecture or (head and "For" in name and name.rpartition("For")[2] == head):
            return auto_name
    return "AutoModel"


def _fidelity_results(fidelity: dict[str, Any]) -> list[EvalResult]:
    """The fidelity figures as ``model-index`` entries: agreement with the teacher on held-out text."""
    teacher = fidelity.get("teacher") or "the source checkpoint"
    return [
        EvalResult(
            task_type="feature-extraction", task_name=f"Fidelity to {teacher}",
            dataset_type=fidelity.get("dataset_type") or "text",
            dataset_name=fidelity.get("dataset_name") or fidelity.get("data") or "held-out texts",
            dataset_split=fidelity.get("dataset_split"), metric_type=name, metric_name=name.replace("_", " "),
            metric_value=value,
        )
        for name, value in (fidelity.get("metrics") or {}).items() if name in FIDELITY_METRICS
    ]
