"""The fidelity table: how well each variant, converted from all-MiniLM-L6-v2, reproduces it.

For each variant: convert the packaged MiniLM, measure zero-shot fidelity on held-out BBC News
articles (mean token cosine, sentence-embedding cosine, Spearman of pairwise similarities),
recover it with ``effzoo distill`` for a fixed wall-time budget, and measure again. Writes
``fidelity.json`` and ``fidelity.md`` (a markdown table) into ``--output``.

    python benchmarks/fidelity.py --variants performer linear hedgehog --minutes 15
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

import effzoo
from effzoo.training.distill import DistillConfig, distill

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


#: Recovery recipe per variant: Hedgehog first trains only its feature maps (the attention-transfer
#: stage of Hedgehog / LoLCATs); variants without parameters of their own train the whole model.
RECIPES = {"hedgehog": {"trainable": "mechanism", "learning_rate": 1e-2}}
DEFAULT_RECIPE = {"trainable": "all", "learning_rate": 1e-4}


def run(variant: str, settings: dict, minutes: float, max_length: int, eval_texts: int, workdir: Path) -> dict:
    student = workdir / f"{variant}-converted"
    effzoo.convert(TEACHER, variant, student, overrides=settings, overwrite=True, progress=False)
    results = distill(DistillConfig(
        teacher=TEACHER, student=str(student), output_dir=str(workdir / f"{variant}-recovered"), overwrite=True,
        max_length=max_length, max_steps=100_000, time_budget_minutes=minutes, eval_texts=eval_texts,
        batch_size=4, save_checkpoints=False, progress=False, **RECIPES.get(variant, DEFAULT_RECIPE),
    ))
    return {"variant": variant, "settings": settings, "recipe": RECIPES.get(variant, DEFAULT_RECIPE),
            **{k: results[k] for k in
            ("before", "after", "steps", "wall_minutes", "cpu_minutes", "trainable_parameters")}}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| variant | settings | zero-shot token cos | zero-shot sentence cos | zero-shot Spearman | "
        "recovered token cos | recovered sentence cos | recovered Spearman | steps | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b, a = row["before"], row["after"]
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
        lines.append(
            f"| `{row['variant']}` | {settings} | {b['token_cosine']:.3f} | {b['sentence_cosine']:.3f} | "
            f"{b['similarity_spearman']:.3f} | {a['token_cosine']:.3f} | {a['sentence_cosine']:.3f} | "
            f"{a['similarity_spearman']:.3f} | {row['steps']} | {row['wall_minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["performer", "linear", "hedgehog"])
    parser.add_argument("--set", nargs="*", default=[], metavar="VARIANT.KEY=VALUE",
                        help="a setting for one variant, e.g. performer.num_random_features=512")
    parser.add_argument("--minutes", type=float, default=15.0, help="recovery budget per variant (wall time)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-texts", type=int, default=64)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    settings: dict[str, dict] = {variant: {} for variant in args.variants}
    for item in args.set:
        target, _, value = item.partition("=")
        variant, _, key = target.partition(".")
        settings.setdefault(variant, {})[key] = json.loads(value)

    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for variant in args.variants:
            rows.append(run(variant, settings[variant], args.minutes, args.max_length, args.eval_texts, Path(workdir)))
            print(markdown(rows[-1:]), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    (args.output / "fidelity.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    (args.output / "fidelity.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
