"""PonderNet's trade-off on BBC News: test accuracy against the mean number of layers run.

Fine-tunes the packaged all-MiniLM-L6-v2 (converted to ``full``) twice with ``effzoo finetune``:
plainly, and with ``--ponder`` (PonderNet's loss, Banino et al. 2021). The ponder model is then
evaluated on the test split at several halting thresholds: each example stops at the first layer
whose cumulative halting probability passes the threshold. Writes ``ponder.json``, ``ponder.md``
and ``ponder.png`` (accuracy against mean layers used, the plain model as the reference point).

    python benchmarks/ponder.py --epochs 1 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from effzoo.training.data import load_bbc_news
from effzoo.training.finetune import FinetuneConfig, finetune

SOURCE = "sentence-transformers/all-MiniLM-L6-v2"
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)


@torch.no_grad()
def evaluate(model_dir: Path, threshold: float | None, texts: list[str], labels: list[int], max_length: int) -> dict:
    """Test accuracy, mean layers used and seconds of a model; a ponder model at halting ``threshold``."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    override = {} if threshold is None else {"ponder_threshold": threshold}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **override).eval()
    correct, layers, started = 0, [], time.perf_counter()
    for start in range(0, len(texts), 32):
        batch = tokenizer(texts[start:start + 32], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        output = model(**batch)
        correct += int((output.logits.argmax(-1) == torch.tensor(labels[start:start + 32])).sum())
        used = getattr(output, "layers_used", None)
        rows = len(batch["input_ids"])
        layers.extend(used.tolist() if used is not None else [model.config.num_hidden_layers] * rows)
    return {"threshold": threshold, "accuracy": correct / len(texts), "mean_layers_used": sum(layers) / len(layers),
            "seconds": round(time.perf_counter() - started, 1)}


def markdown(plain: dict, points: list[dict]) -> str:
    lines = ["| model | halting threshold | test accuracy | mean layers used | eval s |", "|---|---|---|---|---|",
             f"| plain | – | {plain['accuracy']:.3f} | {plain['mean_layers_used']:.0f} | {plain['seconds']:.1f} |"]
    lines += [f"| ponder | {p['threshold']} | {p['accuracy']:.3f} | {p['mean_layers_used']:.2f} | {p['seconds']:.1f} |"
              for p in points]
    return "\n".join(lines) + "\n"


def plot(plain: dict, points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    axes.plot([p["mean_layers_used"] for p in points], [p["accuracy"] for p in points], "o-",
              label="PonderNet, threshold 0.05 … 0.99")
    for point in points:
        axes.annotate(f"{point['threshold']}", (point["mean_layers_used"], point["accuracy"]),
                      textcoords="offset points", xytext=(4, -10), fontsize=7)
    axes.plot([plain["mean_layers_used"]], [plain["accuracy"]], "s", color="black",
              label="plain fine-tune (all layers)")
    axes.set_xlabel("mean layers used per example")
    axes.set_ylabel("test accuracy")
    axes.set_title("BBC News, all-MiniLM-L6-v2 (full): accuracy against depth")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    test = load_bbc_news()["test"]
    settings = dict(model=SOURCE, convert_to="full", max_length=args.max_length, epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, progress=False)
    with tempfile.TemporaryDirectory() as workdir:
        plain_dir, ponder_dir = Path(workdir) / "plain", Path(workdir) / "ponder"
        trained = {"plain": finetune(FinetuneConfig(output_dir=str(plain_dir), **settings)),
                   "ponder": finetune(FinetuneConfig(output_dir=str(ponder_dir), ponder=True, **settings))}
        plain = evaluate(plain_dir, None, test["text"], test["label"], args.max_length)
        points = [evaluate(ponder_dir, t, test["text"], test["label"], args.max_length) for t in args.thresholds]
    report = {"settings": {k: v for k, v in vars(args).items() if k != "output"},
              "training": trained, "plain": plain, "ponder": points}
    (args.output / "ponder.json").write_text(json.dumps(report, indent=2, default=str))
    (args.output / "ponder.md").write_text(markdown(plain, points))
    plot(plain, points, args.output / "ponder.png")
    print(markdown(plain, points))


if __name__ == "__main__":
    main()
