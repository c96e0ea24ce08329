"""BERT / RoBERTa -> full: exact parity, position extension, and refusals that lose nothing."""

import json

import pytest
import torch
import transformers
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaModel,
)

import effzoo
from effzoo.cli import main
from tests.conftest import random_batch, save_tiny_checkpoint

CASES = [
    (BertModel, "bert", "last_hidden_state", effzoo.FullModel),
    (BertForMaskedLM, "bert", "logits", effzoo.FullForMaskedLM),
    (BertForSequenceClassification, "bert", "logits", effzoo.FullForSequenceClassification),
    (RobertaModel, "roberta", "last_hidden_state", effzoo.FullModel),
    (RobertaForMaskedLM, "roberta", "logits", effzoo.FullForMaskedLM),
    (RobertaForSequenceClassification, "roberta", "logits", effzoo.FullForSequenceClassification),
]


@pytest.mark.parametrize("source_class, family, output_name, target_class", CASES,
                         ids=[case[0].__name__ for case in CASES])
def test_converted_full_reproduces_the_source(source_class, family, output_name, target_class, tmp_path):
    extra = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}} if "Sequence" in source_class.__name__ else {}
    source_dir = save_tiny_checkpoint(source_class, tmp_path / "source", family, **extra)
    report = effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)
    assert report.new_parameters == {} and report.tensors_carried > 0
    assert "Tokenizer" in report.tokenizer

    source = source_class.from_pretrained(source_dir).eval()
    converted = transformers.AutoModel.from_pretrained(tmp_path / "out") if target_class is effzoo.FullModel \
        else target_class.from_pretrained(tmp_path / "out")
    converted.eval()
    assert type(converted) is target_class
    input_ids, mask = random_batch()
    if family == "roberta":
        input_ids = input_ids.masked_fill(mask == 0, 1)  # RoBERTa's pad id
    with torch.no_grad():
        expected = source(input_ids, attention_mask=mask)
        actual = converted(input_ids, attention_mask=mask)
    real = mask.bool()
    a, e = actual[output_name], expected[output_name]
    if output_name != "logits" or a.dim() == 3:
        a, e = a[real], e[real]
    assert (a - e).abs().max() < 1e-5
    if output_name == "last_hidden_state":
        assert (actual.pooler_output - expected.pooler_output).abs().max() < 1e-5
    if extra:
        assert converted.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_position_extension_tiles_and_runs_long_inputs(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source", max_position_embeddings=512)
    report = effzoo.convert(source_dir, "full", tmp_path / "out", max_position_embeddings=2048, progress=False)
    assert (report.source_positions, report.positions) == (512, 2048)
    assert "tiled" in str(report)
    source = BertModel.from_pretrained(source_dir)
    model = effzoo.FullModel.from_pretrained(tmp_path / "out").eval()
    table, original = model.embeddings.position_embeddings.weight, source.embeddings.position_embeddings.weight
    assert table.shape[0] == 2048
    torch.testing.assert_close(table[:512], original, atol=0, rtol=0)
    torch.testing.assert_close(table[512:1024], original, atol=0, rtol=0)
    with torch.no_grad():
        out = model(torch.randint(5, 99, (1, 2000))).last_hidden_state
    assert out.shape == (1, 2000, 32) and torch.isfinite(out).all()
    tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 2048


def test_roberta_positions_drop_the_offset(tmp_path):
    source_dir = save_tiny_checkpoint(RobertaModel, tmp_path / "source", "roberta")
    effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)
    source = RobertaModel.from_pretrained(source_dir)
    model = effzoo.FullModel.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(model.embeddings.position_embeddings.weight,
                               source.embeddings.position_embeddings.weight[2:])


def test_pretraining_checkpoint_drops_next_sentence_head(tmp_path):
    source_dir = save_tiny_checkpoint(transformers.BertForPreTraining, tmp_path / "source")
    report = effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)
    assert report.model_class == "FullForMaskedLM"
    assert report.dropped == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                              "cls.seq_relationship.bias", "cls.seq_relationship.weight"]


def test_causal_lm_checkpoint_becomes_a_causal_lm(tmp_path):
    source_dir = save_tiny_checkpoint(transformers.BertLMHeadModel, tmp_path / "source", is_decoder=True)
    report = effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)
    assert report.model_class == "FullForCausalLM" and report.new_parameters == {}
    source = transformers.BertLMHeadModel.from_pretrained(source_dir).eval()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    input_ids = torch.randint(5, 99, (2, 9))
    with torch.no_grad():
        assert (model(input_ids).logits - source(input_ids).logits).abs().max() < 1e-5


def test_hub_ids_resolve_to_packaged_copies_and_fail_clearly_offline(tmp_path, monkeypatch, minilm_path):
    from effzoo.checkpoints import location as sources

    assert sources.resolve_source("sentence-transformers/all-MiniLM-L6-v2") == minilm_path

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(ValueError, match="could not be fetched from the Hub.*Offline, pass the path"):
        sources.resolve_source("someone/some-bert")


def test_unknown_variant_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="Unknown variant .performr.. Known variants: axial, bigbird, fastformer, full, hedgehog"):
        effzoo.convert(tmp_path, "performr", tmp_path / "out")


def test_unknown_setting_lists_valid_keys(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['window'\].*Valid keys: .*hidden_size"):
        effzoo.convert(source_dir, "full", tmp_path / "out", overrides={"window": 3}, progress=False)
    assert not (tmp_path / "out").exists()
    # Class constants of a config are not settings.
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['supported_kernels'\]"):
        effzoo.convert(source_dir, "performer", tmp_path / "out", overrides={"supported_kernels": ["x"]},
                       progress=False)


def test_not_bert_like_names_its_model_type(tmp_path):
    source = tmp_path / "gpt2"
    transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(source)
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        effzoo.convert(source, "full", tmp_path / "out", progress=False)


def test_missing_weights(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    (source_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="No weights in"):
        effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)


def test_corrupt_weights(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    weights = source_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)


def test_bin_checkpoint_is_read_safely(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    model = BertModel.from_pretrained(source_dir)
    (source_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), source_dir / "pytorch_model.bin")
    report = effzoo.convert(source_dir, "full", tmp_path / "out", progress=False)
    assert report.new_parameters == {}


def test_non_empty_output_is_refused_and_kept(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    source_files = {p.name: p.read_bytes() for p in source_dir.iterdir()}
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        effzoo.convert(source_dir, "full", output, progress=False)
    assert (output / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is the source checkpoint"):
        effzoo.convert(source_dir, "full", source_dir, overwrite=True, progress=False)
    effzoo.convert(source_dir, "full", output, overwrite=True, progress=False)
    assert (output / "model.safetensors").is_file() and not (output / "notes.txt").exists()
    assert {p.name: p.read_bytes() for p in source_dir.iterdir()} == source_files


def test_a_failed_conversion_leaves_the_output_untouched(tmp_path):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    output = tmp_path / "out"
    effzoo.convert(source_dir, "full", output, progress=False)
    before = (output / "model.safetensors").read_bytes()
    with pytest.raises(ValueError):
        effzoo.convert(source_dir, "full", output, overwrite=True, overrides={"num_hidden_layers": 0}, progress=False)
    assert (output / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]  # no staging left behind


def test_cli_prints_report_and_clear_errors(tmp_path, capsys):
    source_dir = save_tiny_checkpoint(BertModel, tmp_path / "source")
    assert main(["convert", str(source_dir), "--to", "full", "--output", str(tmp_path / "out"), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "variant     full -> FullModel" in printed and "max |Δ| last_hidden_state  0.00e+00" in printed
    assert main(["convert", str(source_dir), "--to", "full", "--output", str(tmp_path / "out")]) == 2
    assert "error: Output directory" in capsys.readouterr().err
    assert main(["convert", str(source_dir), "--to", "nope", "--output", str(tmp_path / "x")]) == 2
    assert "Known variants: axial, bigbird, fastformer, full" in capsys.readouterr().err
