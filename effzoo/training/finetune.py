"""``effzoo finetune``: fine-tune any variant on a task with Transformers' ``Trainer``.

The model is an effzoo checkpoint, or a BERT/RoBERTa checkpoint converted on the fly
(``convert_to``), with positions extended to ``max_length`` when it is longer than the
source's. Evaluation runs every epoch, the best checkpoint is kept, ``resume_from_checkpoint``
continues an interrupted run, and the same script runs under ``accelerate launch``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, EvalPrediction, Trainer, TrainingArguments

from ..configs.base import EffzooConfig
from ..checkpoints.provenance import read_provenance, record_provenance
from ..output_folders import check_output_dir
from .data import dataset_names, load_data, require_columns
from .models import convert_for_training
from .optimizers import check_optimizer, optimizer_cls_and_kwargs
from .tasks import Columns, get_task

#: Tasks whose head can be PonderNet's (``--ponder``).
PONDER_TASKS = ("sequence-classification", "multiple-choice")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; the CLI fills it from its flags."""

    model: str
    output_dir: str
    data: str = "bbc_news"
    task: str = "sequence-classification"
    convert_to: str | None = None
    max_length: int = 512
    columns: Columns = field(default_factory=Columns)
    epochs: float = 3.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    gradient_checkpointing: bool = False
    bf16: bool = False
    resume_from_checkpoint: str | bool | None = None
    overwrite: bool = False
    save_checkpoints: bool = True
    logging_steps: int = 10
    progress: bool = True
    callbacks: list = field(default_factory=list)
    optimizer: str = "adamw"
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    ponder: bool = False
    ponder_threshold: float | None = None
    ponder_lambda_prior: float | None = None
    ponder_beta: float | None = None
    eval_steps: int | None = None


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train, keep the best checkpoint, evaluate on the test split; return and save the results."""
    output = Path(config.output_dir)
    check_output_dir(output, config.overwrite, resuming=bool(config.resume_from_checkpoint))
    check_optimizer(config.optimizer, config.lookahead_k, config.lookahead_alpha)
    transformers.set_seed(config.seed)
    task = get_task(config.task)
    if config.ponder and task.name not in PONDER_TASKS:
        raise ValueError(f"--ponder works with --task {' or '.join(PONDER_TASKS)} (one prediction per example); "
                         f"got --task {task.name}. Drop --ponder for this task.")
    EffzooConfig(**_ponder_settings(config))  # checks the settings now, before any work
    data = load_data(config.data, seed=config.seed)
    require_columns(data, task.required(config.columns), task.name)
    data = _subsample(data, config)

    model_path = convert_for_training(config.model, config.convert_to, config.max_length, output,
                                      reuse=bool(config.resume_from_checkpoint), progress=config.progress)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    auto_class = getattr(transformers, task.auto_class)
    model_config = transformers.AutoConfig.from_pretrained(model_path)
    positions = model_config.max_position_embeddings
    if config.max_length > positions:
        raise ValueError(
            f"--max-length {config.max_length} is longer than the model's {positions} positions. Extend them with "
            f"--convert-to VARIANT (positions grow to --max-length), or `effzoo convert SOURCE --to VARIANT "
            f"--max-position-embeddings {config.max_length} --output DIR`."
        )
    prepared = task.prepare(data, tokenizer, config.columns, config.max_length)
    model = auto_class.from_pretrained(model_path, **prepared.model_kwargs, **_ponder_settings(config))

    args = _training_arguments(config, prepared.metric_for_best_model, has_validation="validation" in data)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prepared.data["train"],
        eval_dataset=prepared.data.get("validation"),
        data_collator=prepared.collator,
        processing_class=tokenizer,
        compute_metrics=_with_layers_used(prepared.compute_metrics) if config.ponder else prepared.compute_metrics,
        callbacks=config.callbacks,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(config.optimizer, args, config.lookahead_k,
                                                          config.lookahead_alpha),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    training_seconds = time.perf_counter() - started
    trainer.save_model(str(output))
    trainer.save_state()  # trainer_state.json: the training and validation losses logged along the way

    results: dict[str, Any] = {
        "task": task.name,
        "model": config.model,
        "variant": model.config.model_type,
        "max_length": config.max_length,
        "truncated_examples": prepared.truncated,
        "training_seconds": round(training_seconds, 1),
        "train_examples": len(prepared.data["train"]),
    }
    evaluation_split = "test" if "test" in prepared.data else "validation"
    started = time.perf_counter()
    metrics = trainer.evaluate(prepared.data[evaluation_split], metric_key_prefix=evaluation_split)
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) if not isinstance(ids[0], list) else sum(map(len, ids))
                 for ids in prepared.data[evaluation_split]["input_ids"])
    results.update(metrics)
    results["eval_tokens_per_second"] = round(tokens / seconds, 1)
    results["peak_memory_mib"] = round(peak_memory_mib(), 1)
    results["config"] = _jsonable({key: value for key, value in asdict(config).items() if key != "callbacks"})
    if trainer.is_world_process_zero():
        (output / "effzoo_results.json").write_text(json.dumps(results, indent=2))
        _record(output, model_path, config, task, metrics, evaluation_split)
    return results


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _ponder_settings(config: FinetuneConfig) -> dict[str, Any]:
    """Config fields that make the head PonderNet's (``--ponder`` and its settings)."""
    if not config.ponder:
        return {}
    settings = {"ponder_threshold": config.ponder_threshold, "ponder_lambda_prior": config.ponder_lambda_prior,
                "ponder_beta": config.ponder_beta}
    return {"ponder": True, **{key: value for key, value in settings.items() if value is not None}}


def _with_layers_used(compute_metrics: Any) -> Any:
    """The task's metrics plus ``mean_layers_used``, from a PonderNet head's (logits, layers_used) predictions."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits, layers_used = prediction.predictions
        metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=prediction.label_ids))
        return {**metrics, "mean_layers_used": float(np.mean(layers_used))}

    return compute


def _record(output: Path, model_path: str, config: FinetuneConfig, task: Any, metrics: dict[str, float],
            split: str) -> None:
    """Provenance for the model card: what it came from, how it was trained, what it scored."""
    dataset_type, data_name = dataset_names(config.data)
    results = [
        {"task_type": task.pipeline_task, "dataset_type": dataset_type, "dataset_name": data_name,
         "dataset_split": split, "metric_type": key.removeprefix(f"{split}_"), "metric_value": value}
        for key, value in metrics.items()
        if key.removeprefix(f"{split}_") in ("accuracy", "f1", "mse", "exact_match")
    ]
    settings = {"epochs": config.epochs, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                "max_length": config.max_length, "seed": config.seed}
    if config.optimizer != "adamw":
        settings["optimizer"] = config.optimizer
    if config.ponder:
        settings["ponder"] = True
    inherited = read_provenance(model_path) if Path(model_path).is_dir() else {}
    record_provenance(output, **inherited, training={"task": task.name, "data": data_name, "settings": settings},
                      results=results)


def _subsample(data, config: FinetuneConfig):
    for split, limit in (("train", config.max_train_samples), ("validation", config.max_eval_samples),
                         ("test", config.max_eval_samples)):
        if limit is not None and split in data and len(data[split]) > limit:
            data[split] = data[split].shuffle(seed=config.seed).select(range(limit))
    return data


def _training_arguments(config: FinetuneConfig, best_metric: str, has_validation: bool) -> TrainingArguments:
    strategy = "epoch" if has_validation and config.save_checkpoints else "no"
    every = {}
    if strategy != "no" and config.eval_steps:  # evaluate (and checkpoint) every eval_steps instead
        strategy, every = "steps", {"eval_steps": config.eval_steps, "save_steps": config.eval_steps}
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the training steps
        seed=config.seed,
        eval_strategy=strategy,
        save_strategy=strategy,
        **every,
        save_total_limit=2 if strategy != "no" else None,
        load_best_model_at_end=strategy != "no",
        metric_for_best_model=best_metric if strategy != "no" else None,
        greater_is_better=best_metric != "mse",
        activation_checkpointing=config.gradient_checkpointing,
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=config.logging_steps,
        report_to=[],
        disable_tqdm=not config.progress,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
