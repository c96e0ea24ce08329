"""``effzoo bench``: the parser (added to the ``effzoo`` command) and the function it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..arguments import parse_setting, positive_int

EPILOG = """\
examples:
  effzoo bench                                   # every implementation, the default sweep
  effzoo bench full bert_sdpa floor --lengths 512 1024 2048 --modes train
  effzoo bench --variant performer --set num_random_features=256 --variant full
  effzoo bench full floor --max-length 32768 --budget-s 900
  effzoo bench full performer --device cuda --lengths 1024 4096 16384 --modes train infer
  effzoo bench --list                            # the known implementations and their settings
See docs/benchmarks.md for how to read the output.
"""


class _SelectAction(argparse.Action):
    """``--variant NAME``: add an implementation; the ``--set`` flags after it are its settings."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        from .harness import Selection

        selections = getattr(namespace, self.dest, None) or []
        selections.append(Selection(value))
        setattr(namespace, self.dest, selections)


class _SetAction(argparse.Action):
    """``--set KEY=VALUE``: a config setting of the implementation named by the last ``--variant``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        selections = getattr(namespace, self.dest, None) or []
        if not selections:
            raise argparse.ArgumentError(
                self, f"{value[0]}={value[1]!r} needs an implementation: put --variant NAME before --set.")
        key, setting = value
        selections[-1].settings[key] = setting


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}.")
    return value


def add_bench_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``effzoo`` command's subparsers."""
    bench = commands.add_parser(
        "bench", help="measure speed and memory of the variants, BERT, the floor and Transformers' built-ins",
        description="Time and memory of one encoder layer (or a whole small model) against the sequence length, "
                    "forward+backward and inference, plus causal decoding; each point in its own process. "
                    "Writes a JSON lines file, a markdown table and PNG plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("implementations", nargs="*", metavar="IMPL",
                       help="implementations to measure (default: all; see --list)")
    bench.add_argument("--variant", dest="selections", action=_SelectAction, metavar="NAME",
                       help="add an implementation; the --set flags that follow configure it (repeatable)")
    bench.add_argument("--set", dest="selections", action=_SetAction, type=parse_setting, metavar="KEY=VALUE",
                       help="set a config field of the preceding --variant (repeatable)")
    bench.add_argument("--list", action="store_true", help="list the known implementations and exit")

    sweep = bench.add_argument_group("sweep")
    sweep.add_argument("--lengths", nargs="+", type=positive_int, metavar="L", help="explicit sequence lengths")
    sweep.add_argument("--min-length", type=positive_int, default=512, metavar="L", help="(default 512)")
    sweep.add_argument("--max-length", type=positive_int, default=16384, metavar="L",
                       help="lengths double from --min-length up to this (default 16384; 32768 on request)")
    sweep.add_argument("--modes", nargs="+", choices=("train", "infer", "decode"),
                       default=["train", "infer", "decode"], help="(default: all three)")
    sweep.add_argument("--model", action="store_true", help="measure a whole small model instead of one layer")
    sweep.add_argument("--model-layers", type=positive_int, default=4, metavar="N",
                       help="layers of the --model (default 4)")
    sweep.add_argument("--decode-contexts", nargs="+", type=positive_int, metavar="C",
                       help="decoding contexts (default: the lengths from 1024 up)")
    sweep.add_argument("--decode-layers", type=positive_int, default=1, metavar="N",
                       help="layers of the decoding LM (default 1)")
    sweep.add_argument("--decode-tokens", type=positive_int, default=8, metavar="N",
                       help="tokens per timed decoding repetition (default 8)")

    shape = bench.add_argument_group("size (default: BERT-base, batch 1)")
    shape.add_argument("--hidden-size", type=positive_int, default=768, metavar="D")
    shape.add_argument("--heads", type=positive_int, default=12, metavar="H")
    shape.add_argument("--ffn", type=positive_int, default=3072, metavar="F", help="intermediate size")
    shape.add_argument("--batch-size", type=positive_int, default=1, metavar="B")
    shape.add_argument("--vocab-size", type=positive_int, default=30522, metavar="V")

    measure = bench.add_argument_group("measurement")
    measure.add_argument("--device", default="cpu",
                         help="cpu (default), cuda or cuda:N: the same sweep on a GPU, timed with CUDA events "
                              "(synchronised), peak memory from torch.cuda.max_memory_allocated")
    measure.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    measure.add_argument("--threads", type=positive_int, metavar="N",
                         help="torch threads per point (default: torch.get_num_threads())")
    measure.add_argument("--warmup", type=_non_negative_int, default=1, metavar="N", help="(default 1)")
    measure.add_argument("--repeats", type=positive_int, default=5, metavar="N",
                         help="timed repetitions (default 5) ...")
    measure.add_argument("--min-repeats", type=positive_int, default=3, metavar="N",
                         help="... lowered to no fewer than this when they would take over --target-s (default 3)")
    measure.add_argument("--target-s", type=_positive_float, default=30.0, metavar="S", help="(default 30)")
    measure.add_argument("--budget-s", type=_positive_float, default=300.0, metavar="S",
                         help="skip a point predicted to take longer than this (default 300)")
    measure.add_argument("--max-memory-mib", type=_positive_float, metavar="MIB",
                         help="skip a point predicted to need more (default: 85%% of the memory available, "
                              "the GPU's with --device cuda)")
    measure.add_argument("--contention-threshold", type=_positive_float, default=0.10, metavar="SHARE",
                         help="a repetition during which other processes used more than this share of the CPU "
                              "is repeated (default 0.10)")
    measure.add_argument("--quiet-wait-s", type=float, default=5.0, metavar="S",
                         help="before a point, wait up to this long for other processes to leave the CPU, "
                              "and up to a fifth of it before repeating a contended repetition (default 5; "
                              "0 disables)")
    measure.add_argument("--max-retries", type=_non_negative_int, default=3, metavar="N",
                         help="contended repetitions repeated per point (default 3)")
    measure.add_argument("--point-retries", type=_non_negative_int, default=1, metavar="N",
                         help="times a still-contended cheap point is measured again (default 1)")
    measure.add_argument("--slope-from", type=positive_int, default=2048, metavar="L",
                         help="fit the time exponent over the lengths from L up (default 2048)")
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--isolation", choices=("forkserver", "subprocess", "inline"), default="forkserver",
                         help="a fresh process per point from a fork server (default), or `python -m "
                              "effzoo.bench.point` per point; inline is for tests only")

    output = bench.add_argument_group("output")
    output.add_argument("--output", metavar="PATH",
                        help="a .jsonl file, or a directory for bench-<time>.jsonl (default benchmarks/results/)")
    output.add_argument("--no-plots", action="store_true", help="write the JSON and the table only")
    output.add_argument("--report", metavar="JSONL",
                        help="measure nothing: print the table of an earlier run and redraw its plots")
    return bench


def options_from_args(args: argparse.Namespace) -> Any:
    from .harness import BenchOptions, Selection

    selections = [Selection(name) for name in args.implementations] + list(args.selections or [])
    return BenchOptions(
        selections=selections, lengths=args.lengths, min_length=args.min_length, max_length=args.max_length,
        modes=tuple(dict.fromkeys(args.modes)), scope="model" if args.model else "layer",
        model_layers=args.model_layers, decode_contexts=args.decode_contexts, decode_layers=args.decode_layers,
        decode_tokens=args.decode_tokens, hidden_size=args.hidden_size, num_attention_heads=args.heads,
        intermediate_size=args.ffn, batch_size=args.batch_size, vocab_size=args.vocab_size, device=args.device,
        dtype=args.dtype, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
        min_repeats=args.min_repeats, target_s=args.target_s, budget_s=args.budget_s,
        max_memory_mib=args.max_memory_mib, contention_threshold=args.contention_threshold,
        quiet_wait_s=args.quiet_wait_s, max_retries=args.max_retries, point_retries=args.point_retries,
        slope_from=args.slope_from,
        seed=args.seed, isolation=args.isolation, output=args.output, plots=not args.no_plots,
    )


def list_implementations() -> str:
    from .implementations import implementations

    lines = []
    for name, implementation in implementations().items():
        extras = []
        if implementation.build_decoder is not None:
            extras.append("decodes")
        if implementation.counterpart:
            extras.append(f"same idea as effzoo {implementation.counterpart!r}")
        lines.append(f"{name:18} {implementation.kind:12} {implementation.description}"
                     + (f" [{'; '.join(extras)}]" if extras else ""))
        lines.append(f"{'':31} settings: {', '.join(implementation.setting_keys())}")
    return "\n".join(lines)


def _report(path: str, plots: bool) -> None:
    from pathlib import Path

    from .harness import read_run
    from .report import markdown_report, plot_run

    if not Path(path).is_file():
        raise FileNotFoundError(f"--report {path}: no such file; pass a run's .jsonl file.")
    records = read_run(path)
    print(markdown_report(records))
    if plots:
        try:
            for plot in plot_run(records, Path(path).with_suffix("")):
                print(f"plot:    {plot}")
        except ImportError:
            print("plots need matplotlib: pip install 'effzoo[bench]'", file=sys.stderr)


def run_bench(args: argparse.Namespace) -> None:
    """The ``bench`` subcommand: run, print the table, say where the files are."""
    if args.list:
        print(list_implementations())
        return
    if args.report:
        _report(args.report, plots=not args.no_plots)
        return
    from .harness import run_benchmark

    run = run_benchmark(options_from_args(args))
    print(run.table)
    print()
    print(f"results: {run.path}")
    for path in run.plots:
        print(f"plot:    {path}")
    for message in run.messages:
        print(message, file=sys.stderr)
    if run.records[0]["status"] == "interrupted":
        raise SystemExit(130)
