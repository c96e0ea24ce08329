"""Transformers' own Longformer and BigBird checkpoints convert to effzoo's longformer and bigbird."""

import pytest
import torch
from transformers import BigBirdConfig, BigBirdForMaskedLM, LongformerConfig, LongformerModel

import effzoo
from effzoo.attention import dense_reference_attention
from tests.attention.test_sparse_patterns import HEADS, bigbird_globals, bigbird_reference, reference_allowed
from tests.conftest import TINY, tiny_tokenizer


def save(model, directory):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def longformer_source(tmp_path):
    fields = dict(TINY, max_position_embeddings=TINY["max_position_embeddings"] + 2)
    config = LongformerConfig(**fields, attention_window=[4, 6], pad_token_id=1)
    return save(LongformerModel(config).eval(), tmp_path / "longformer")


@pytest.mark.parametrize("with_global", [False, True])
def test_longformer_checkpoint_reproduces_transformers(longformer_source, tmp_path, with_global):
    report = effzoo.convert(longformer_source, "longformer", tmp_path / "out", progress=False,
                            overrides={"dense_attention_below": 0})
    assert report.new_parameters == {} and report.dropped == []
    model = effzoo.EffzooLongformerModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.attention_window == [4, 6] and model.config.global_special_tokens is False
    source = LongformerModel.from_pretrained(longformer_source).eval()

    input_ids = torch.randint(5, 99, (2, 20))
    mask = torch.ones_like(input_ids)
    mask[1, 13:] = 0
    input_ids = input_ids.masked_fill(mask == 0, 1)
    global_mask = torch.zeros_like(input_ids)
    if with_global:
        global_mask[:, 0] = 1
        global_mask[0, 7] = 1
    with torch.no_grad():
        expected = source(input_ids, attention_mask=mask, global_attention_mask=global_mask).last_hidden_state
        actual = model(input_ids, attention_mask=mask, global_attention_mask=global_mask).last_hidden_state
    real = mask.bool()
    assert (actual[real] - expected[real]).abs().max() < 1e-5


def test_bigbird_checkpoint_carries_every_weight_and_follows_its_layout(tmp_path):
    config = BigBirdConfig(**TINY, block_size=2, num_random_blocks=1, attention_type="block_sparse")
    source = save(BigBirdForMaskedLM(config).eval(), tmp_path / "bigbird")
    report = effzoo.convert(source, "bigbird", tmp_path / "out", progress=False, overrides={"dense_attention_below": 0})
    # Transformers' BigBirdForMaskedLM keeps a pooler that a masked LM does not use.
    assert report.new_parameters == {} and report.dropped == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert report.model_class == "EffzooBigBirdForMaskedLM"
    model = effzoo.EffzooBigBirdForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert (model.config.block_size, model.config.num_random_blocks) == (2, 1)
    reference = BigBirdForMaskedLM.from_pretrained(source)
    ours = dict(model.named_parameters())
    for name, parameter in reference.named_parameters():
        if "pooler" not in name:
            torch.testing.assert_close(ours[name], parameter, atol=0, rtol=0)

    # The converted layer attends exactly as the dense reference under its own (converted) layout:
    # window of 3 blocks, its random blocks, the end blocks global, no special tokens.
    mechanism = model.bert.encoder.layer[0].attention.self.mechanism
    q, k, v = (torch.randn(1, HEADS, 16, 8) for _ in range(3))
    with torch.no_grad():
        out = mechanism(q, k, v)
    allowed, _ = reference_allowed(bigbird_reference(mechanism, 2), [16], 16, "right", causal=False, special=False,
                                   extra_global=bigbird_globals(2))
    torch.testing.assert_close(out, dense_reference_attention(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_an_unsupported_source_type_is_named(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4, hidden_dim=37)).save_pretrained(
        tmp_path / "distil")
    with pytest.raises(ValueError, match="model_type 'distilbert'.*Reformer \\(bert, big_bird, longformer, reformer, roberta"):
        effzoo.convert(tmp_path / "distil", "longformer", tmp_path / "out", progress=False)
