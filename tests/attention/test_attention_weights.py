"""``output_attentions=True``: exact attention returns BERT's weights; the kernel family says it has none."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertModel

import effzoo
from effzoo.variants import VARIANTS

from ..conftest import TINY, save_tiny_checkpoint


@pytest.mark.parametrize("causal", [False, True])
def test_full_returns_berts_eager_attention_weights(causal, tmp_path, device):
    fields = {"is_decoder": True} if causal else {}
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert", **fields)
    bert = BertModel.from_pretrained(source, attn_implementation="eager").to(device).eval()
    effzoo.convert(source, "full", tmp_path / "full", overrides=fields, progress=False)
    model = AutoModel.from_pretrained(tmp_path / "full").to(device).eval()
    input_ids = torch.randint(5, TINY["vocab_size"], (3, 11), device=device)
    mask = torch.ones_like(input_ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0

    with torch.no_grad():
        expected = bert(input_ids, attention_mask=mask, output_attentions=True).attentions
        got = model(input_ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(expected) == TINY["num_hidden_layers"]
    real_queries = mask.bool()[:, None, :, None]
    for ours, theirs in zip(got, expected):
        assert ours.shape == (3, TINY["num_attention_heads"], 11, 11)
        torch.testing.assert_close(ours * real_queries, theirs * real_queries, atol=1e-5, rtol=1e-5)
        assert (ours * ~real_queries).abs().max() == 0  # padded queries see nothing, as their context
        sums = ours.sum(-1).transpose(1, 2)[mask.bool()]  # (real queries, heads)
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_full_weights_leave_the_outputs_unchanged(tiny_full_config):
    model = effzoo.FullModel(tiny_full_config).eval()
    input_ids = torch.randint(5, TINY["vocab_size"], (2, 9))
    plain = model(input_ids).last_hidden_state
    with_weights = model(input_ids, output_attentions=True)
    torch.testing.assert_close(with_weights.last_hidden_state, plain, atol=1e-6, rtol=1e-6)
    rows = with_weights.attentions[0].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


@pytest.mark.parametrize("name", [name for name, variant in VARIANTS.items()
                                  if variant.model_classes["AutoModel"].mechanism_class.attention_weights_layout
                                  is None])
def test_mechanisms_without_weights_refuse_clearly(name):
    variant = VARIANTS[name]
    model = variant.model_classes["AutoModel"](variant.config_class(**TINY)).eval()
    with pytest.raises(ValueError, match="has no attention weights.*Call without output_attentions"):
        model(torch.ones(1, 4, dtype=torch.long), output_attentions=True)
    model.config.output_attentions = True  # read from the config as well
    with pytest.raises(ValueError, match="has no attention weights"):
        model(torch.ones(1, 4, dtype=torch.long))
