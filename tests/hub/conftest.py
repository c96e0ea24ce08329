"""Tiny effzoo checkpoints as `effzoo convert` writes them: config, weights, code and a tokenizer."""

from pathlib import Path

import pytest
from transformers import BertTokenizer

from effzoo.variants import get_variant
from tests.conftest import TINY

#: The tiny tokenizer's vocabulary: BERT's special tokens, then the words w0 … w93.
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(TINY["vocab_size"] - 5)]


def save_effzoo_checkpoint(directory: Path, auto_name: str = "AutoModel", variant: str = "full", **config_fields):
    """Save a tiny random effzoo model with the head of ``auto_name``, and its tokenizer; return the model."""
    row = get_variant(variant)
    model = row.model_classes[auto_name](row.config_class(**TINY, **config_fields)).eval()
    model.save_pretrained(directory)
    BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)}).save_pretrained(directory)
    return model


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny sequence-classification checkpoint folder (no model card yet)."""
    directory = tmp_path / "tiny-full"
    save_effzoo_checkpoint(directory, "AutoModelForSequenceClassification")
    return directory
