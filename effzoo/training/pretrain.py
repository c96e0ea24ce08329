"""``effzoo pretrain``: continued masked-LM (or causal-LM) pre-training on long text.

The Longformer recipe for turning a 512-token checkpoint into a long one: convert with
positions extended by tiling (``convert_to`` + ``max_length``), pack documents into blocks of
``max_length`` tokens, and continue pre-training so that the model learns to use the new
positions and its new attention.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from ..output_folders import check_output_dir
from .data import load_data
from .models import convert_for_training
from .optimizers import check_optimizer, optimizer_cls_and_kwargs

OBJECTIVES = ("mlm", "clm")


@dataclass
class PretrainConfig:
    """A continued pre-training run; the CLI fills it from its flags."""

    model: str
    output_dir: str
    data: str = "bbc_news"
    text_column: str = "text"
    convert_to: str | None = None
    objective: str = "mlm"
    max_length: int = 512
    mlm_probability: float = 0.15
    max_steps: int = 1000
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    seed: int = 0
    gradient_checkpointing: bool = False
    bf16: bool = False
    resume_from_checkpoint: str | bool | None = None
    overwrite: bool = False
    save_steps: int = 500
    logging_steps: int = 10
    progress: bool = True
    optimizer: str = "adamw"
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5


def pack_texts(texts: list[str], tokenizer, block_length: int) -> dict[str, list[list[int]]]:
    """Tokenize every document and cut the concatenation into blocks of ``block_length`` tokens.

    No padding is wasted and long documents fill whole blocks; the tail shorter than one
    block is dropped.
    """
    ids = list(chain.from_iterable(tokenizer(texts, verbose=False)["input_ids"]))
    blocks = [ids[start : start + block_length] for start in range(0, len(ids) - block_length + 1, block_length)]
    return {"input_ids": blocks, "attention_mask": [[1] * block_length for _ in blocks]}


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Continue pre-training, save the model, and report the held-out loss and perplexity."""
    from datasets import Dataset

    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}.")
    output = Path(config.output_dir)
    check_output_dir(output, config.overwrite, resuming=bool(config.resume_from_checkpoint))
    check_optimizer(config.optimizer, config.lookahead_k, config.lookahead_alpha)
    transformers.set_seed(config.seed)
    data = load_data(config.data, seed=config.seed)
    model_path = convert_for_training(config.model, config.convert_to, config.max_length, output,
                                      reuse=bool(config.resume_from_checkpoint), progress=config.progress)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    auto_class = transformers.AutoModelForMaskedLM if config.objective == "mlm" else transformers.AutoModelForCausalLM
    model = auto_class.from_pretrained(model_path)
    if config.max_length > model.config.max_position_embeddings:
        raise ValueError(
            f"--max-length {config.max_length} is longer than the model's {model.config.max_position_embeddings} "
            "positions; pass --convert-to VARIANT to extend them."
        )
    splits = {split: Dataset.from_dict(pack_texts(list(data[split][config.text_column]), tokenizer, config.max_length))
              for split in ("train", "validation")}
    if len(splits["train"]) == 0:
        raise ValueError(f"The data is shorter than one block of {config.max_length} tokens; lower --max-length.")

    args = TrainingArguments(
        output_dir=str(output), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, warmup_steps=0.05, seed=config.seed, save_steps=config.save_steps,
        save_total_limit=2, logging_steps=config.logging_steps, report_to=[], bf16=config.bf16,
        activation_checkpointing=config.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not config.progress,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=config.objective == "mlm",
                                               mlm_probability=config.mlm_probability, seed=config.seed)
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["validation"],
                      data_collator=collator, processing_class=tokenizer,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(config.optimizer, args, config.lookahead_k,
                                                                        config.lookahead_alpha))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    results = {"objective": config.objective, "variant": model.config.model_type, "max_length": config.max_length,
               "train_blocks": len(splits["train"]), "training_seconds": round(time.perf_counter() - started, 1)}
    metrics = trainer.evaluate()
    results.update(metrics, perplexity=math.exp(min(metrics["eval_loss"], 50)))
    trainer.save_model(str(output))
    results["config"] = json.loads(json.dumps(asdict(config), default=str))
    if trainer.is_world_process_zero():
        (output / "effzoo_results.json").write_text(json.dumps(results, indent=2))
    return results
