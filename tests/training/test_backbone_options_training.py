"""Trainer trains the backbone options unchanged: an upcycled mixture of experts, a reversible model."""

import torch
from transformers import BertForMaskedLM, BertModel

import effzoo
from effzoo.training.pretrain import PretrainConfig, pretrain
from tests.conftest import save_tiny_checkpoint
from tests.training.test_finetune import run, words


def test_finetune_an_upcycled_mixture_of_experts(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    effzoo.convert(source, "full", tmp_path / "moe", overrides={"num_experts": 4}, progress=False)
    before = effzoo.FullModel.from_pretrained(tmp_path / "moe").encoder.layer[0].router.weight.clone()
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "\n".join(f"{words(row)},{['sports', 'politics'][row % 2]}" for row in range(40)))
    results = run(source, tmp_path, data, model=str(tmp_path / "moe"), convert_to=None, epochs=1)
    assert 0.0 <= results["validation_accuracy"] <= 1.0  # router outputs are not mistaken for predictions
    trained = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "run")
    assert not torch.allclose(trained.bert.encoder.layer[0].router.weight, before)


def test_pretrain_a_reversible_model_with_lookahead(tmp_path):
    source = save_tiny_checkpoint(BertForMaskedLM, tmp_path / "bert")
    report = effzoo.convert(source, "full", tmp_path / "rev", overrides={"reversible": True}, progress=False)
    assert report.notes and "not function-preserving" in report.notes[0]
    text = tmp_path / "texts.txt"
    text.write_text("\n".join(" ".join(f"w{(row * 5 + i) % 90}" for i in range(30)) for row in range(40)))
    results = pretrain(PretrainConfig(model=str(tmp_path / "rev"), output_dir=str(tmp_path / "out"), data=str(text),
                                      max_length=32, max_steps=8, batch_size=4, learning_rate=2e-3, progress=False,
                                      logging_steps=1, optimizer="lookahead_adamw", lookahead_k=3))
    assert torch.isfinite(torch.tensor(results["eval_loss"]))
    assert effzoo.FullForMaskedLM.from_pretrained(tmp_path / "out").config.reversible
