"""The ``effzoo`` command. Each subcommand is a thin layer over a Python function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arguments import parse_setting, positive_int
from .bench import cli as bench_cli
from .hub import cli as hub_cli
from .training import cli as training_cli


def build_parser() -> argparse.ArgumentParser:
    from .variants import VARIANTS

    parser = argparse.ArgumentParser(prog="effzoo", description="Efficient transformers for Hugging Face Transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert a BERT or RoBERTa checkpoint into an effzoo variant",
        description="Convert a BERT/RoBERTa checkpoint (a local directory or a Hub id) into an effzoo variant.",
    )
    convert.add_argument("source", help="checkpoint directory or Hub id (packaged checkpoints work offline)")
    convert.add_argument("--to", required=True, metavar="VARIANT", help=f"one of: {', '.join(sorted(VARIANTS))}")
    convert.add_argument("--output", required=True, help="directory to write the converted checkpoint to")
    convert.add_argument("--max-position-embeddings", type=positive_int, metavar="N",
                         help="extend the positions to N by tiling the learned ones")
    convert.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                         metavar="KEY=VALUE", help="set a config field of the variant (repeatable)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    convert.add_argument("--calibration-text", metavar="FILE",
                         help="text file (paragraphs split at blank lines) on which a variant with data-estimated "
                              "state (routing's centroids) is calibrated; default: a built-in BBC News sample")
    convert.add_argument("--verify", action="store_true",
                         help="then compare the converted model with the source on sample texts")

    for add_parser, _ in _COMMANDS.values():
        add_parser(commands)
    return parser


def _run_convert(args: argparse.Namespace) -> None:
    from .conversion import compare_with_source, convert

    report = convert(
        args.source, args.to, args.output, max_position_embeddings=args.max_position_embeddings,
        overrides=dict(args.settings), overwrite=args.overwrite, calibration_text=args.calibration_text,
    )
    print(report)
    if args.verify:
        print(compare_with_source(args.source, args.output))


#: The other commands: name -> (adds its parser, runs it). Each lives with the code it drives.
_COMMANDS = {
    "finetune": (training_cli.add_finetune_parser, training_cli.run_finetune),
    "pretrain": (training_cli.add_pretrain_parser, training_cli.run_pretrain),
    "distill": (training_cli.add_distill_parser, training_cli.run_distill),
    "quickstart": (training_cli.add_quickstart_parser, training_cli.run_quickstart),
    "card": (hub_cli.add_card_parser, hub_cli.run_card),
    "push": (hub_cli.add_push_parser, hub_cli.run_push),
    "bench": (bench_cli.add_bench_parser, bench_cli.run_bench),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    run = _run_convert if args.command == "convert" else _COMMANDS[args.command][1]
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"effzoo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
