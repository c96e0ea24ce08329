"""effzoo finetune --ponder: PonderNet trains through Trainer, and evaluation reports the layers used."""

import json

import pytest
from transformers import BertModel

import effzoo
from effzoo.cli import main
from tests.conftest import save_tiny_checkpoint
from tests.training.test_finetune import run, words


def test_finetune_with_ponder_reports_mean_layers_used(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "\n".join(f"{words(row)},{['sports', 'politics'][row % 2]}" for row in range(40)))
    results = run(source, tmp_path, data, ponder=True, ponder_threshold=0.4, epochs=1, optimizer="radam",
                  eval_steps=2)
    assert 1.0 <= results["validation_mean_layers_used"] <= 2.0 and "validation_accuracy" in results
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [2, 4, 5]  # --eval-steps 2, and the end
    model = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "run")
    assert model.config.ponder and model.config.ponder_threshold == 0.4 and model.halting.weight.shape == (1, 32)
    saved = json.loads((tmp_path / "run" / "effzoo_results.json").read_text())
    assert saved["config"]["ponder"] is True and saved["config"]["optimizer"] == "radam"

    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("\n".join(json.dumps({"tokens": words(i).split(), "label": ["O", "X"] * 4}) for i in range(8)))
    with pytest.raises(ValueError, match="--ponder works with --task sequence-classification or multiple-choice"):
        run(source, tmp_path, tokens, task="token-classification", ponder=True, output_dir=str(tmp_path / "tok"))
    assert main(["finetune", str(source), "--convert-to", "full", "--data", str(data), "--ponder",
                 "--ponder-threshold", "1.5", "--output", str(tmp_path / "bad"), "--no-progress"]) == 2
