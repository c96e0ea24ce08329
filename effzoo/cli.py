"""The ``effzoo`` command. Each subcommand is a thin layer over a Python function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it is JSON (numbers, true/false, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}.")
    return value


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
    convert.add_argument("--max-position-embeddings", type=_positive_int, metavar="N",
                         help="extend the positions to N by tiling the learned ones")
    convert.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[],
                         metavar="KEY=VALUE", help="set a config field of the variant (repeatable)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    convert.add_argument("--verify", action="store_true",
                         help="then compare the converted model with the source on sample texts")
    return parser


def _run_convert(args: argparse.Namespace) -> None:
    from .conversion import compare_with_source, convert

    report = convert(
        args.source, args.to, args.output, max_position_embeddings=args.max_position_embeddings,
        overrides=dict(args.settings), overwrite=args.overwrite,
    )
    print(report)
    if args.verify:
        print(compare_with_source(args.source, args.output))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        {"convert": _run_convert}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"effzoo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
