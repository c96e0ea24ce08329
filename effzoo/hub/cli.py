"""Command-line parsers of ``effzoo card`` and ``effzoo push``: one ``add_*_parser`` / ``run_*`` pair each."""

from __future__ import annotations

import argparse
from typing import Any


def add_card_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "card", help="write the model card (README.md) of a checkpoint",
        description="Write DIR/README.md: variant, mechanism and paper, source, training, evaluation results and "
                    "fidelity to the teacher (both also as model-index), speed, a usage example, intended use and "
                    "licence, from DIR/effzoo_provenance.json.",
    )
    parser.add_argument("directory", metavar="DIR", help="an effzoo checkpoint folder")
    parser.add_argument("--model-name", help="the Hub repo id it will have (default: the folder's name)")
    parser.add_argument("--source", metavar="ID", help="the checkpoint it was converted from, if not recorded")
    parser.add_argument("--license", help="licence id, if the source's is not recorded (e.g. apache-2.0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing README.md")


def run_card(args: argparse.Namespace) -> None:
    from .card import write_model_card

    path = write_model_card(
        args.directory, model_name=args.model_name, source={"id": args.source} if args.source else None,
        license=args.license, overwrite=args.overwrite,
    )
    print(f"wrote {path}")


def add_push_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "push", help="upload a checkpoint to the Hugging Face Hub",
        description="Upload an effzoo checkpoint folder (config, weights, code, card) to a Hub model repo. "
                    "Uses the token of `hf auth login` or HF_TOKEN.",
    )
    parser.add_argument("directory", metavar="DIR", help="an effzoo checkpoint folder with its README.md")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo, e.g. user/minilm-performer")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if needed)")
    parser.add_argument("--commit-message", help="the commit's message")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and list the files; send nothing")


def run_push(args: argparse.Namespace) -> None:
    from .push import push_checkpoint

    print(push_checkpoint(
        args.directory, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
        commit_message=args.commit_message,
    ))
