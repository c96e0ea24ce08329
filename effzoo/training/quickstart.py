"""``effzoo quickstart``: the whole zoo at work on real data, offline, in minutes on a CPU.

1. convert the packaged all-MiniLM-L6-v2 (a 512-token BERT) to a long-context variant, its
   positions tiled to ``max_length`` (1,024 by default: beyond what the original can read);
2. recover it briefly against its teacher (``effzoo distill``);
3. fine-tune it on BBC News at ``max_length`` tokens, and ``full`` at 512 with the same budget;
4. evaluate both on the held-out test split: accuracy, tokens per second, peak memory;
5. leave a Hub-ready folder: weights, tokenizer, code, and a model card with the results.

Each training step runs in its own process, so that the peak memory it reports is its own.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..output_folders import check_output_dir

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class QuickstartConfig:
    """Defaults that finish in about ten minutes on two CPU cores."""

    output_dir: str = "quickstart"
    variant: str = "longformer"
    settings: dict[str, Any] | None = None
    max_length: int = 1024
    baseline_length: int = 512
    recovery_steps: int = 40
    train_documents: int = 160
    test_documents: int = 120
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 2e-4
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


#: Pattern sizes of the default long-context variants: Longformer's window of 128 keeps
#: MiniLM's sentence embeddings at 0.97+ cosine zero-shot (global [CLS] / [SEP]).
DEFAULT_SETTINGS = {"longformer": {"attention_window": 128}, "local": {"block_size": 128}}


def _in_subprocess(function: Any, *args: Any) -> Any:
    """Run ``function(*args)`` in a fresh process and return its result (its own peak memory)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def _recover(config: QuickstartConfig, converted: Path, recovered: Path) -> dict[str, Any]:
    from .distill import DistillConfig, distill

    return distill(DistillConfig(
        teacher=TEACHER, student=str(converted), output_dir=str(recovered), max_length=256,
        max_steps=config.recovery_steps, eval_texts=32, batch_size=4, learning_rate=1e-4, seed=config.seed,
        save_checkpoints=False, progress=config.progress, overwrite=True,
    ))


def _finetune(config: QuickstartConfig, model: str, convert_to: str | None, max_length: int,
              output: Path) -> dict[str, Any]:
    from .finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(
        model=model, convert_to=convert_to, output_dir=str(output), max_length=max_length, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed,
        max_train_samples=config.train_documents, max_eval_samples=config.test_documents,
        save_checkpoints=False, progress=config.progress, overwrite=True,
    ))


def quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run the five steps; returns (and writes) the comparison table."""
    from ..conversion import convert
    from ..hub import write_model_card

    output = Path(config.output_dir)
    check_output_dir(output, config.overwrite)
    started = time.perf_counter()
    work = output / "work"
    settings = config.settings if config.settings is not None else DEFAULT_SETTINGS.get(config.variant, {})

    converted = work / f"{config.variant}-converted"
    report = convert(TEACHER, config.variant, converted, max_position_embeddings=config.max_length,
                     overrides=settings, overwrite=True, progress=config.progress)
    recovered = work / f"{config.variant}-recovered"
    recovery = _in_subprocess(_recover, config, converted, recovered)
    model_dir = output / f"minilm-{config.variant}-bbc-news"
    efficient = _in_subprocess(_finetune, config, str(recovered), None, config.max_length, model_dir)
    baseline = _in_subprocess(_finetune, config, TEACHER, "full", config.baseline_length, work / "full-bbc-news")

    write_model_card(model_dir, model_name=model_dir.name, overwrite=True, speed=[
        _row(config.variant, config.max_length, efficient), _row("full", config.baseline_length, baseline),
    ])
    table = {
        "rows": [_row(config.variant, config.max_length, efficient), _row("full", config.baseline_length, baseline)],
        "recovery": {"before": recovery["before"], "after": recovery["after"], "steps": recovery["steps"]},
        "conversion": {"new_parameters": len(report.new_parameters), "positions": report.positions},
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "model_dir": str(model_dir),
        "config": asdict(config) | {"settings": settings},
    }
    (output / "quickstart.json").write_text(json.dumps(table, indent=2))
    return table


def _row(variant: str, max_length: int, results: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": variant, "max_length": max_length, "test_accuracy": round(results["test_accuracy"], 4),
        "tokens_per_second": results["eval_tokens_per_second"], "peak_memory_mib": results["peak_memory_mib"],
        "truncated_examples": results["truncated_examples"], "training_seconds": results["training_seconds"],
    }


def format_table(table: dict[str, Any]) -> str:
    """The printed summary: one row per model."""
    lines = ["| model | tokens | test accuracy | eval tokens/s | peak memory MiB | training s |",
             "|---|---|---|---|---|---|"]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | {row['max_length']} | {row['test_accuracy']:.3f} | "
                     f"{row['tokens_per_second']:.0f} | {row['peak_memory_mib']:.0f} | {row['training_seconds']:.0f} |")
    recovery = table["recovery"]
    lines.append(f"\nrecovery ({recovery['steps']} steps): sentence cosine to the teacher "
                 f"{recovery['before']['sentence_cosine']:.3f} -> {recovery['after']['sentence_cosine']:.3f}")
    lines.append(f"Hub-ready folder: {table['model_dir']}   (wall time {table['wall_minutes']} min)")
    return "\n".join(lines)
