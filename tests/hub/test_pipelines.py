"""Transformers' pipeline() runs effzoo checkpoints, and agrees with calling the model directly."""

import pytest
import torch
from transformers import pipeline

from tests.hub.conftest import save_effzoo_checkpoint

TEXTS = ["w1 w2 w3 w4 w5 w6 w7", "w8 w9"]  # different lengths: batch_size=2 pads the second
LABELS = {"id2label": {0: "sport", 1: "tech", 2: "politics"}}


@pytest.fixture
def run(tmp_path):
    """Save a tiny checkpoint for ``task``; return its pipeline and a direct call of its model."""
    def build(task, auto_name, **config_fields):
        model = save_effzoo_checkpoint(tmp_path, auto_name, **config_fields)
        task_pipeline = pipeline(task, model=str(tmp_path), batch_size=2)

        def direct(text):
            with torch.no_grad():
                return model(**task_pipeline.tokenizer(text, return_tensors="pt"))

        return task_pipeline, direct
    return build


def test_fill_mask(run):
    fill_mask, direct = run("fill-mask", "AutoModelForMaskedLM")
    text = "w1 w2 [MASK] w3"
    predictions = fill_mask(text, top_k=3)
    probabilities = direct(text).logits[0, 3].softmax(-1)  # [CLS] w1 w2 [MASK]
    best = probabilities.topk(3)
    assert [p["token"] for p in predictions] == best.indices.tolist()
    torch.testing.assert_close(torch.tensor([p["score"] for p in predictions]), best.values)
    assert predictions[0]["sequence"] == text.replace("[MASK]", predictions[0]["token_str"])


def test_text_classification(run):
    classify, direct = run("text-classification", "AutoModelForSequenceClassification", **LABELS)
    for text, prediction in zip(TEXTS, classify(TEXTS)):
        probabilities = direct(text).logits[0].softmax(-1)
        assert prediction["label"] == LABELS["id2label"][int(probabilities.argmax())]
        torch.testing.assert_close(prediction["score"], probabilities.max().item())


def test_feature_extraction(run):
    extract, direct = run("feature-extraction", "AutoModel")
    for text, features in zip(TEXTS, extract(TEXTS, return_tensors=True)):
        alone = direct(text).last_hidden_state
        torch.testing.assert_close(features[:, : alone.shape[1]], alone)  # the batch's rows come padded


def test_token_classification(run):
    tag, direct = run("token-classification", "AutoModelForTokenClassification", **LABELS)
    for text, entities in zip(TEXTS, tag(TEXTS)):
        probabilities = direct(text).logits[0, 1:-1].softmax(-1)  # without [CLS] and [SEP]
        assert [entity["word"] for entity in entities] == text.split()
        expected = [LABELS["id2label"][int(i)] for i in probabilities.argmax(-1)]
        assert [entity["entity"] for entity in entities] == expected
        torch.testing.assert_close(torch.tensor([float(entity["score"]) for entity in entities]),
                                   probabilities.max(-1).values)
