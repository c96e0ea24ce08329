"""The acceptance test of the foundation: the real all-MiniLM-L6-v2, converted to `full`, is BERT."""

import pytest
import torch
from transformers import AutoTokenizer, BertModel

import effzoo

pytestmark = pytest.mark.real_checkpoint

SENTENCES = [
    "The Bank of England kept interest rates on hold at 4.75% on Thursday.",
    "Goal!",
    "Shares in the games maker rose sharply after it reported record profits for the Christmas quarter, "
    "helped by strong sales of its new handheld console in Europe and Japan.",
    "Ministers said the bill would be debated again next week.",
]


@pytest.fixture(scope="module")
def converted(minilm_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("minilm") / "full"
    report = effzoo.convert(minilm_path, "full", output, progress=False)
    return output, report


def test_minilm_full_reproduces_bert_on_a_padded_batch(minilm_path, converted):
    output, report = converted
    assert report.new_parameters == {} and report.dropped == []
    assert report.parameters_carried == sum(p.numel() for p in BertModel.from_pretrained(minilm_path).parameters())
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(-1).unique().numel() == len(SENTENCES)  # all lengths differ
    with torch.no_grad():
        expected = BertModel.from_pretrained(minilm_path).eval()(**batch)
        actual = effzoo.FullModel.from_pretrained(output).eval()(**batch)
    real = batch["attention_mask"].bool()
    assert (actual.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() < 1e-5
    assert (actual.pooler_output - expected.pooler_output).abs().max() < 1e-5


def test_minilm_parity_report(minilm_path, converted):
    report = effzoo.compare_with_source(minilm_path, converted[0])
    assert report.max_abs_diff_last_hidden_state < 1e-5 and report.max_abs_diff_pooler_output < 1e-5
    assert report.min_token_cosine > 0.99999


def test_minilm_as_longformer_with_a_covering_window_is_still_bert(minilm_path, tmp_path):
    """Global projections start as copies of the local ones, so a window that covers the input
    (and the global special tokens) computes exactly BERT; positions extend to 4,096 by tiling."""
    output = tmp_path / "longformer"
    report = effzoo.convert(minilm_path, "longformer", output, max_position_embeddings=4096,
                            overrides={"attention_window": 1024}, progress=False)
    assert all("_global." in key for key in report.new_parameters)
    assert "copied from the layer's query/key/value" in str(report)
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = BertModel.from_pretrained(minilm_path).eval()(**batch).last_hidden_state
        model = effzoo.EffzooLongformerModel.from_pretrained(output).eval()
        actual = model(**batch).last_hidden_state
        long_input = model(torch.randint(1000, 2000, (1, 4000))).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (actual[real] - expected[real]).abs().max() < 1e-5
    assert long_input.shape == (1, 4000, 384) and torch.isfinite(long_input).all()
