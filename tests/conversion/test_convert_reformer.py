"""A Transformers Reformer, made tiny and random here, converts to the ``reformer`` variant and
computes what it computed: the same logits in eval (1e-5) with the rotations of its hash_seed,
causal and bidirectional, local and LSH layers mixed, with right padding."""

import pytest
import torch
import transformers
from transformers import ReformerConfig
from transformers.models.reformer.modeling_reformer import LSHSelfAttention

import effzoo

LCM = 8  # the lengths compared are multiples of every chunk length (4 and 8)


def source_config(**fields) -> ReformerConfig:
    return ReformerConfig(**{
        "vocab_size": 99, "hidden_size": 32, "num_attention_heads": 2, "attention_head_size": 16,
        "feed_forward_size": 37, "attn_layers": ["local", "lsh", "local", "lsh"], "axial_pos_shape": [8, 8],
        "axial_pos_embds_dim": [8, 24], "max_position_embeddings": 64, "local_attn_chunk_length": 4,
        "local_num_chunks_before": 1, "local_num_chunks_after": 0, "lsh_attn_chunk_length": 8,
        "lsh_num_chunks_before": 1, "lsh_num_chunks_after": 0, "num_buckets": 4, "num_hashes": 2, "hash_seed": 3,
        "is_decoder": True, "pad_token_id": 0, **fields,
    })


def saved_source(tmp_path, model_class=transformers.ReformerModelWithLMHead, **fields):
    torch.manual_seed(0)
    model = model_class(source_config(**fields)).eval()
    with torch.no_grad():  # larger than the default init, so that the attention patterns matter
        for name, parameter in model.named_parameters():
            if "self_attention" in name:
                parameter.mul_(8.0)
    model.save_pretrained(tmp_path / "source")
    return finely_self_masked(model), tmp_path / "source"


def batch(length: int, lengths: list[int]):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 99, (len(lengths), length), generator=generator)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(mask == 0, 0), mask


def assert_same_logits(source, converted, length, lengths):
    input_ids, mask = batch(length, lengths)
    with torch.no_grad():
        expected = source(input_ids, attention_mask=mask).logits
        actual = converted(input_ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)


def finely_self_masked(model):
    """Transformers' LSH layers with a self-mask score of -1e3 instead of -1e5: the same function in
    float32 (exp(-1e3) underflows to 0 as exp(-1e5) does, so a token with anything else to attend
    still gives itself no weight), without its rounding. A token that attends only itself (the first
    token of a causal model) has the log-normaliser -1e5 + log(copies) in each hash round, whose
    float32 spacing (0.008) stays in the rounds' weights: its context is v·(1 ± 1e-2) where the exact
    one, and effzoo's, is v. At -1e3 the spacing is 6e-5."""
    for module in model.modules():
        if isinstance(module, LSHSelfAttention):
            module.self_mask_value_float32.fill_(-1e3)
    return model


@pytest.mark.parametrize("num_buckets", [4, [2, 2]], ids=["buckets-4", "buckets-2x2"])
def test_causal_lm_gives_the_same_logits(tmp_path, num_buckets):
    source, source_dir = saved_source(tmp_path, num_buckets=num_buckets)
    report = effzoo.convert(source_dir, "reformer", tmp_path / "out", progress=False)
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(converted) is effzoo.EffzooReformerForCausalLM and report.dropped == []
    assert converted.config.layer_attention[0]["num_buckets"] == 1 and converted.config.layer_attention[1] == {}
    for length, lengths in [(2 * LCM, [16, 16]), (3 * LCM, [24, 13]), (LCM, [8, 5])]:
        assert_same_logits(source, converted, length, lengths)


def test_bidirectional_masked_lm_gives_the_same_logits(tmp_path):
    source, source_dir = saved_source(tmp_path, transformers.ReformerForMaskedLM, is_decoder=False,
                                      lsh_num_chunks_after=1, local_num_chunks_after=1)
    effzoo.convert(source_dir, "reformer", tmp_path / "out", progress=False)
    converted = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    for length, lengths in [(2 * LCM, [16, 11]), (4 * LCM, [32, 20])]:
        assert_same_logits(source, converted, length, lengths)


def test_the_comparison_sees_a_wrong_rotation(tmp_path):
    """The test above can fail: another hash seed gives other buckets and other logits."""
    source, source_dir = saved_source(tmp_path)
    effzoo.convert(source_dir, "reformer", tmp_path / "out", overrides={"hash_seed": 4}, progress=False)
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with pytest.raises(AssertionError):
        assert_same_logits(source, converted, 2 * LCM, [16, 16])


def test_a_source_without_hash_seed_is_reported(tmp_path):
    _, source_dir = saved_source(tmp_path, hash_seed=None)
    report = effzoo.convert(source_dir, "reformer", tmp_path / "out", progress=False)
    assert any("no hash_seed" in note for note in report.notes)
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").hash_seed == 0


@pytest.mark.parametrize("fields, message", [
    ({"num_buckets": None}, "num_buckets is None"),
    ({"attention_head_size": 8}, "attention_head_size 8"),
])
def test_an_unconvertible_reformer_names_the_setting(tmp_path, fields, message):
    _, source_dir = saved_source(tmp_path, **fields)
    with pytest.raises(ValueError, match=message):
        effzoo.convert(source_dir, "reformer", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_reformer_converts_to_the_reformer_variant_only(tmp_path):
    _, source_dir = saved_source(tmp_path)
    with pytest.raises(ValueError, match="use --to reformer"):
        effzoo.convert(source_dir, "local", tmp_path / "out", progress=False)


def test_axial_positions_cannot_be_extended(tmp_path):
    _, source_dir = saved_source(tmp_path)
    with pytest.raises(ValueError, match="axial position embeddings"):
        effzoo.convert(source_dir, "reformer", tmp_path / "out", max_position_embeddings=128, progress=False)


@pytest.mark.parametrize("source_class, auto_name, output", [
    (transformers.ReformerModel, "AutoModel", "last_hidden_state"),
    (transformers.ReformerForSequenceClassification, "AutoModelForSequenceClassification", "logits"),
    (transformers.ReformerForQuestionAnswering, "AutoModelForQuestionAnswering", "start_logits"),
])
def test_every_head_carries_over(tmp_path, source_class, auto_name, output):
    source, source_dir = saved_source(tmp_path, source_class, is_decoder=False, lsh_num_chunks_after=1)
    report = effzoo.convert(source_dir, "reformer", tmp_path / "out", progress=False)
    new = [key for key in report.new_parameters if "rotations" not in key]
    assert report.dropped == [] and new == (["pooler.dense.weight", "pooler.dense.bias"] if auto_name == "AutoModel" else [])
    converted = getattr(transformers, auto_name).from_pretrained(tmp_path / "out").eval()
    input_ids, mask = batch(2 * LCM, [16, 11])
    with torch.no_grad():
        expected = getattr(source(input_ids, attention_mask=mask), output)
        actual = getattr(converted(input_ids, attention_mask=mask), output)
    if output != "logits":
        expected, actual = expected[mask.bool()], actual[mask.bool()]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
