"""effzoo finetune on tiny models and tiny local data: every task, resuming, and bad input."""

import csv
import json
import math

import pytest
import torch
from transformers import BertModel, TrainerCallback

import effzoo
from effzoo.hub import write_model_card
from effzoo.training import FinetuneConfig, finetune
from effzoo.training.tasks import Columns
from tests.conftest import save_tiny_checkpoint


def words(row: int, length: int = 8) -> str:
    return " ".join(f"w{(row * 7 + i * 3) % 90}" for i in range(length))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_checkpoint(BertModel, tmp_path_factory.mktemp("bert") / "source")


@pytest.fixture
def classification_csv(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for row in range(40):
            writer.writerow([words(row), ["sports", "politics"][row % 2]])
    return path


def run(tiny_bert, tmp_path, data, **overrides):
    options = dict(model=str(tiny_bert), convert_to="full", output_dir=str(tmp_path / "run"), data=str(data),
                   max_length=16, epochs=2, batch_size=8, learning_rate=1e-3, progress=False, logging_steps=1)
    options.update(overrides)
    return finetune(FinetuneConfig(**options))


def test_sequence_classification_from_a_converted_bert(tiny_bert, tmp_path, classification_csv):
    results = run(tiny_bert, tmp_path, classification_csv)
    assert results["variant"] == "effzoo-full"
    assert 0.0 <= results["validation_accuracy"] <= 1.0 and "validation_f1" in results
    saved = json.loads((tmp_path / "run" / "effzoo_results.json").read_text())
    assert saved["truncated_examples"] == 0 and saved["train_examples"] == 36
    model = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "run")
    assert model.config.id2label == {0: "politics", 1: "sports"}
    # Conversion and training leave the provenance a model card is written from.
    card = write_model_card(tmp_path / "run").read_text()
    assert f"- type: accuracy\n      value: {results['validation_accuracy']}" in card and str(tiny_bert) in card


def test_truncation_is_reported(tiny_bert, tmp_path, classification_csv):
    results = run(tiny_bert, tmp_path, classification_csv, max_length=6, epochs=1)
    assert results["truncated_examples"] == 40


def test_multi_label_and_regression(tiny_bert, tmp_path):
    rows = [{"text": words(i), "label": [["a"], ["b"], ["a", "b"]][i % 3], "score": float(i % 5)} for i in range(30)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    multi = run(tiny_bert, tmp_path, data, epochs=1, output_dir=str(tmp_path / "multi"))
    assert "validation_f1" in multi
    model = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "multi")
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == 2
    regression = run(tiny_bert, tmp_path, data, epochs=1, output_dir=str(tmp_path / "reg"),
                     columns=Columns(label="score"))
    assert "validation_mse" in regression


def test_token_classification_multiple_choice_and_qa(tiny_bert, tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("\n".join(json.dumps({"tokens": words(i).split(), "label": ["O", "X"] * 4}) for i in range(20)))
    assert "validation_f1" in run(tiny_bert, tmp_path, tokens, task="token-classification", epochs=1,
                                  output_dir=str(tmp_path / "tok"))
    choices = tmp_path / "choices.jsonl"
    choices.write_text("\n".join(json.dumps({"question": words(i, 4), "choices": [words(i + 1, 3), words(i + 2, 3)],
                                             "label": i % 2}) for i in range(20)))
    assert "validation_accuracy" in run(tiny_bert, tmp_path, choices, task="multiple-choice", epochs=1,
                                        output_dir=str(tmp_path / "mc"))
    squad = tmp_path / "squad.jsonl"
    rows = []
    for i in range(20):
        context = words(i, 12)
        answer = context.split()[5]
        rows.append({"question": words(i + 3, 3), "context": context,
                     "answers": {"text": [answer], "answer_start": [context.index(" " + answer) + 1]}})
    squad.write_text("\n".join(json.dumps(row) for row in rows))
    assert "validation_exact_match" in run(tiny_bert, tmp_path, squad, task="question-answering", epochs=1,
                                           output_dir=str(tmp_path / "qa"), max_length=24)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


def test_resume_from_checkpoint_reaches_the_same_weights(tiny_bert, tmp_path, classification_csv):
    straight = run(tiny_bert, tmp_path, classification_csv, output_dir=str(tmp_path / "straight"), epochs=2)
    interrupted = str(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_bert, tmp_path, classification_csv, output_dir=interrupted, callbacks=[Interrupt()])
    assert (tmp_path / "interrupted" / "checkpoint-5").is_dir()  # epoch 1 saved, and loadable
    effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "interrupted" / "checkpoint-5")
    resumed = run(tiny_bert, tmp_path, classification_csv, output_dir=interrupted, resume_from_checkpoint=True)
    assert resumed["validation_accuracy"] == straight["validation_accuracy"]
    a = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "straight").state_dict()
    b = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "interrupted").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_bad_data_is_explained(tiny_bert, tmp_path, classification_csv):
    with pytest.raises(ValueError, match="does not exist"):
        run(tiny_bert, tmp_path, tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run(tiny_bert, tmp_path, empty)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['category'\].*it has \['text', 'label'\]"):
        run(tiny_bert, tmp_path, classification_csv, columns=Columns(label="category"), output_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # refused before converting anything
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "\n".join(f"{words(i)},{'ab'[i % 2]}" for i in range(10)))
    (folder / "validation.csv").write_text("text,label\n" + f"{words(1)},c\n")
    with pytest.raises(ValueError, match=r"Labels \['c'\] in the validation split are not among"):
        run(tiny_bert, tmp_path, folder, output_dir=str(tmp_path / "labels"))


def test_max_length_beyond_positions_says_how_to_extend(tiny_bert, tmp_path, classification_csv):
    effzoo.convert(tiny_bert, "full", tmp_path / "full", progress=False)
    with pytest.raises(ValueError, match=r"longer than the model's 64 positions.*--convert-to"):
        run(tiny_bert, tmp_path, classification_csv, model=str(tmp_path / "full"), convert_to=None, max_length=100)
    results = run(tiny_bert, tmp_path, classification_csv, max_length=100, epochs=1, output_dir=str(tmp_path / "x"))
    assert json.loads((tmp_path / "x" / "converted" / "config.json").read_text())["max_position_embeddings"] == 100
    assert results["max_length"] == 100


def test_non_empty_output_is_refused(tiny_bert, tmp_path, classification_csv):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        run(tiny_bert, tmp_path, classification_csv)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_bf16_and_gradient_checkpointing_train_on_cpu(tiny_bert, tmp_path, classification_csv):
    results = run(tiny_bert, tmp_path, classification_csv, epochs=1, bf16=True, gradient_checkpointing=True)
    assert 0.0 <= results["validation_accuracy"] <= 1.0 and math.isfinite(results["validation_loss"])
