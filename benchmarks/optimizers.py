"""Validation-loss curves of the optimizers on BBC News: AdamW, RAdam and Lookahead(RAdam), 3 seeds.

Each run is ``effzoo finetune`` (the packaged all-MiniLM-L6-v2 converted to ``full``, BBC News,
sequence classification) with ``--optimizer NAME --seed S --eval-steps N``; the curves come from
each run's ``trainer_state.json``. Writes ``optimizers.json``, ``optimizers.md`` (final test
accuracy per optimizer and seed) and ``optimizers.png`` (validation loss against step) into
``--output``.

    python benchmarks/optimizers.py --epochs 1 --max-length 128 --eval-steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from effzoo.training.finetune import FinetuneConfig, finetune

SOURCE = "sentence-transformers/all-MiniLM-L6-v2"
OPTIMIZERS = ("adamw", "radam", "lookahead_radam")


def run(optimizer: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    output = workdir / f"{optimizer}-{seed}"
    results = finetune(FinetuneConfig(
        model=SOURCE, convert_to="full", output_dir=str(output), max_length=args.max_length, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=seed, optimizer=optimizer,
        eval_steps=args.eval_steps, progress=False,
    ))
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    curve = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    return {"optimizer": optimizer, "seed": seed, "test_accuracy": results["test_accuracy"],
            "test_loss": results["test_loss"], "training_seconds": results["training_seconds"],
            "validation_loss": curve}


def markdown(rows: list[dict]) -> str:
    lines = ["| optimizer | test accuracy (seeds 0, 1, 2) | mean | final validation loss (mean) | train s (mean) |",
             "|---|---|---|---|---|"]
    for optimizer in dict.fromkeys(row["optimizer"] for row in rows):
        runs = [row for row in rows if row["optimizer"] == optimizer]
        accuracies = [row["test_accuracy"] for row in runs]
        final_losses = [row["validation_loss"][-1][1] for row in runs]
        lines.append(
            f"| `{optimizer}` | {', '.join(f'{a:.3f}' for a in accuracies)} | {statistics.mean(accuracies):.3f} | "
            f"{statistics.mean(final_losses):.3f} | {statistics.mean(r['training_seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(OPTIMIZERS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for row in rows:
        steps, losses = zip(*row["validation_loss"], strict=True)
        axes.plot(steps, losses, color=colours.get(row["optimizer"]), alpha=0.8,
                  label=row["optimizer"] if row["seed"] == rows[0]["seed"] else None)
    axes.set_xlabel("training step")
    axes.set_ylabel("validation loss")
    axes.set_yscale("log")
    axes.set_title("BBC News, all-MiniLM-L6-v2 (full), one line per seed")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for optimizer in args.optimizers:
            for seed in args.seeds:
                rows.append(run(optimizer, seed, args, Path(workdir)))
                print(f"{optimizer} seed {seed}: test accuracy {rows[-1]['test_accuracy']:.3f}", flush=True)
    settings = {key: value for key, value in vars(args).items() if key != "output"}
    (args.output / "optimizers.json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    (args.output / "optimizers.md").write_text(markdown(rows))
    plot(rows, args.output / "optimizers.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
