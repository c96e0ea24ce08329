"""The quick start end to end on the real MiniLM, at a size that runs in about a minute."""

import json

import pytest

from effzoo.checkpoints import read_provenance
from effzoo.training.quickstart import QuickstartConfig, format_table, quickstart

pytestmark = pytest.mark.real_checkpoint


def test_quickstart_compares_a_long_variant_with_full_and_leaves_a_hub_folder(minilm_path, tmp_path):
    table = quickstart(QuickstartConfig(
        output_dir=str(tmp_path / "qs"), variant="longformer", max_length=576, recovery_steps=2,
        train_documents=8, test_documents=8, batch_size=4, progress=False,
    ))
    efficient, baseline = table["rows"]
    assert (efficient["model"], efficient["max_length"]) == ("longformer", 576)
    assert (baseline["model"], baseline["max_length"]) == ("full", 512)
    assert 0.0 <= efficient["test_accuracy"] <= 1.0 and efficient["peak_memory_mib"] > 0
    assert efficient["truncated_examples"] <= baseline["truncated_examples"]  # longer inputs cut less
    model_dir = tmp_path / "qs" / "minilm-longformer-bbc-news"
    for name in ("model.safetensors", "tokenizer.json", "effzoo_remote.py", "README.md"):
        assert (model_dir / name).is_file(), name
    provenance = read_provenance(model_dir)
    assert provenance["source"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert provenance["fidelity"]["teacher"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert provenance["results"][0]["dataset_name"] == "BBC News"
    assert "| longformer | 576 |" in format_table(table)
    assert json.loads((tmp_path / "qs" / "quickstart.json").read_text())["rows"] == table["rows"]
