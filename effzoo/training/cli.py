"""Command-line parsers of ``effzoo finetune``, ``effzoo pretrain`` and ``effzoo distill``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..arguments import parse_setting, positive_int
from .data import BUILTIN_DATASETS


def _common(parser: argparse.ArgumentParser, *, data_help: str) -> None:
    parser.add_argument("--output", required=True, dest="output_dir", help="directory for checkpoints and results")
    parser.add_argument("--data", default="bbc_news",
                        help=f"{data_help}: a built-in set ({', '.join(BUILTIN_DATASETS)}), a CSV / JSON lines / "
                             "text file or a folder of train.* / validation.* / test.* files, or a Hub data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--resume-from-checkpoint", nargs="?", const=True, default=None,
                        help="continue from the last checkpoint in --output (or from the one named)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _optimizer_flags(parser: argparse.ArgumentParser) -> None:
    # No `choices`: an unknown name is a ValueError that lists the known ones (effzoo.training.optimizers).
    parser.add_argument("--optimizer", default="adamw",
                        help="adamw (Trainer's default), radam, lookahead_adamw or lookahead_radam")
    parser.add_argument("--lookahead-k", type=int, default=5, help="Lookahead: fast steps per slow step")
    parser.add_argument("--lookahead-alpha", type=float, default=0.5, help="Lookahead: slow step size in (0, 1]")


def add_finetune_parser(commands: Any) -> None:
    parser = commands.add_parser("finetune", help="fine-tune a variant on a task with Trainer",
                                 description="Fine-tune an effzoo checkpoint (or a converted BERT) with Trainer.")
    parser.add_argument("model", help="effzoo checkpoint, or a BERT/RoBERTa checkpoint with --convert-to")
    parser.add_argument("--convert-to", metavar="VARIANT", help="convert MODEL to this variant first")
    parser.add_argument("--task", default="sequence-classification",
                        choices=["sequence-classification", "token-classification", "multiple-choice",
                                 "question-answering"])
    parser.add_argument("--max-length", type=int, default=512, help="tokens per example (truncation is reported)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-pair-column", default=None)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--ponder", action="store_true",
                        help="PonderNet adaptive depth (sequence classification, multiple choice): the test "
                             "results report mean_layers_used")
    parser.add_argument("--ponder-threshold", type=float, help="exit where the cumulative halting probability "
                                                                  "passes this (default 0.5)")
    parser.add_argument("--ponder-lambda-prior", type=float, help="halting probability of the geometric prior "
                                                                     "(default 0.2)")
    parser.add_argument("--ponder-beta", type=float, help="weight of the KL term (default 0.01)")
    parser.add_argument("--eval-steps", type=int,
                        help="evaluate and checkpoint every N steps instead of every epoch (denser validation curves)")
    _optimizer_flags(parser)
    _common(parser, data_help="labelled data")


def run_finetune(args: argparse.Namespace) -> None:
    from .finetune import FinetuneConfig, finetune
    from .tasks import Columns

    columns = Columns(text=args.text_column, text_pair=args.text_pair_column, label=args.label_column)
    config = FinetuneConfig(
        model=args.model, output_dir=args.output_dir, data=args.data, task=args.task, convert_to=args.convert_to,
        max_length=args.max_length, columns=columns, epochs=args.epochs, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        seed=args.seed, max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
        gradient_checkpointing=args.gradient_checkpointing, bf16=args.bf16,
        resume_from_checkpoint=args.resume_from_checkpoint, overwrite=args.overwrite, progress=args.progress,
        optimizer=args.optimizer, lookahead_k=args.lookahead_k, lookahead_alpha=args.lookahead_alpha,
        ponder=args.ponder, ponder_threshold=args.ponder_threshold, ponder_lambda_prior=args.ponder_lambda_prior,
        ponder_beta=args.ponder_beta, eval_steps=args.eval_steps,
    )
    _print_results(finetune(config))


def add_pretrain_parser(commands: Any) -> None:
    parser = commands.add_parser("pretrain", help="continue masked-LM / causal-LM pre-training on long text",
                                 description="Continued pre-training with packed documents (the Longformer recipe).")
    parser.add_argument("model", help="effzoo checkpoint, or a BERT/RoBERTa checkpoint with --convert-to")
    parser.add_argument("--convert-to", metavar="VARIANT", help="convert MODEL to this variant first")
    parser.add_argument("--objective", choices=["mlm", "clm"], default="mlm")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per packed block")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--mlm-probability", type=float, default=0.15)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    _optimizer_flags(parser)
    _common(parser, data_help="unlabelled text")


def run_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        model=args.model, output_dir=args.output_dir, data=args.data, text_column=args.text_column,
        convert_to=args.convert_to, objective=args.objective, max_length=args.max_length,
        mlm_probability=args.mlm_probability, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16, resume_from_checkpoint=args.resume_from_checkpoint, overwrite=args.overwrite,
        progress=args.progress, optimizer=args.optimizer, lookahead_k=args.lookahead_k,
        lookahead_alpha=args.lookahead_alpha,
    )
    _print_results(pretrain(config))


def add_distill_parser(commands: Any) -> None:
    parser = commands.add_parser("distill", help="recover a converted model against its teacher",
                                 description="Train a converted student to match its teacher: every layer's "
                                             "attention output and hidden state, and with --sentence-weight its "
                                             "sentence embedding.")
    parser.add_argument("--teacher", required=True, help="the source checkpoint (directory or Hub id)")
    parser.add_argument("--student", required=True, help="the converted effzoo checkpoint")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-steps", type=positive_int, metavar="N",
                        help="stop after N steps (default: 200 without --minutes; with --minutes, no step cap unless "
                             "this is given)")
    parser.add_argument("--minutes", type=float, dest="time_budget_minutes", metavar="MINUTES",
                        help="train for this much wall time, however many steps that takes (the learning rate warms "
                             "up over 20 steps, then follows --schedule on the clock)")
    parser.add_argument("--schedule", choices=["linear", "constant"], default="linear",
                        help="after the warm-up the learning rate falls linearly to zero at the end of the run "
                             "(of --minutes when given, else of --max-steps), or holds")
    parser.add_argument("--trainable", choices=["all", "attention", "mechanism"], default="all")
    parser.add_argument("--mechanism-learning-rate", type=float,
                        help="learning rate of the mechanism's own parameters (Hedgehog's feature maps); "
                             "the rest train at --learning-rate")
    parser.add_argument("--sentence-weight", type=float, default=0.0,
                        help="weight of 1 - cosine between the two models' mean-pooled sentence embeddings, beside "
                             "the layer terms' weight of 1 each (0: layers only; 10 suits students that start close "
                             "to their teacher, such as the sparse patterns)")
    parser.add_argument("--teacher-forced", action="store_true",
                        help="attention transfer: each layer's attention takes the teacher's input to that layer and "
                             "only the attention outputs are matched (a first stage, e.g. for Hedgehog's feature maps "
                             "with --trainable mechanism; then run distill again on its output)")
    parser.add_argument("--bf16", action="store_true",
                        help="training forwards under bfloat16 autocast (measurements stay float32): about 2x faster "
                             "steps on a CPU with AVX-512 BF16, possibly slower on one without")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--eval-texts", type=int, default=64, help="held-out texts for the fidelity figures")
    parser.add_argument("--select-every", type=int, default=50,
                        help="measure the student every N steps on validation texts and save the best weights, "
                             "the converted ones included (0: save the last)")
    parser.add_argument("--selection-texts", type=int, default=32, help="validation texts for --select-every")
    _common(parser, data_help="unlabelled text")
    parser.set_defaults(batch_size=4, learning_rate=1e-4)


def run_distill(args: argparse.Namespace) -> None:
    from .distill import DistillConfig, distill

    config = DistillConfig(
        teacher=args.teacher, student=args.student, output_dir=args.output_dir, data=args.data,
        text_column=args.text_column, max_length=args.max_length, max_steps=args.max_steps,
        time_budget_minutes=args.time_budget_minutes, batch_size=args.batch_size, learning_rate=args.learning_rate,
        schedule=args.schedule, trainable=args.trainable, mechanism_learning_rate=args.mechanism_learning_rate,
        sentence_weight=args.sentence_weight, teacher_forced=args.teacher_forced, bf16=args.bf16,
        eval_texts=args.eval_texts, select_every=args.select_every, selection_texts=args.selection_texts,
        seed=args.seed, overwrite=args.overwrite, resume_from_checkpoint=args.resume_from_checkpoint,
        progress=args.progress,
    )
    _print_results(distill(config))


def add_quickstart_parser(commands: Any) -> None:
    from .quickstart import QuickstartConfig

    defaults = QuickstartConfig()
    parser = commands.add_parser(
        "quickstart", help="the whole zoo on real data: convert, recover, fine-tune long, compare with BERT",
        description="Convert the packaged all-MiniLM-L6-v2 to a long-context variant, recover it against its "
                    "teacher, fine-tune it on BBC News beyond 512 tokens, compare with `full` at 512, and leave "
                    "a Hub-ready folder. Offline; about ten minutes on two CPU cores with the defaults.",
    )
    parser.add_argument("--output", dest="output_dir", default=defaults.output_dir)
    parser.add_argument("--variant", default=defaults.variant)
    parser.add_argument("--set", dest="settings", type=parse_setting, action="append", default=None,
                        metavar="KEY=VALUE", help="a config field of the variant (default: a window of 128)")
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--train-documents", type=int, default=defaults.train_documents)
    parser.add_argument("--test-documents", type=int, default=defaults.test_documents)
    parser.add_argument("--recovery-steps", type=int, default=defaults.recovery_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import QuickstartConfig, format_table, quickstart

    config = QuickstartConfig(
        output_dir=args.output_dir, variant=args.variant,
        settings=dict(args.settings) if args.settings is not None else None, max_length=args.max_length,
        train_documents=args.train_documents, test_documents=args.test_documents,
        recovery_steps=args.recovery_steps, seed=args.seed, overwrite=args.overwrite, progress=args.progress,
    )
    print(format_table(quickstart(config)))


def _print_results(results: dict[str, Any]) -> None:
    print(json.dumps({key: value for key, value in results.items() if key != "config"}, indent=2))
