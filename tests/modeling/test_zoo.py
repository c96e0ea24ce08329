"""What every registered variant must do, whatever its attention (tiny configs, seeded)."""

import pytest
import torch
import transformers
from transformers import BertModel

import effzoo
from effzoo.variants import VARIANTS, get_variant
from tests.conftest import TINY, random_batch, save_tiny_checkpoint
from tests.modeling.test_heads import HEAD_INPUTS, head_batch

VARIANT_HEADS = [(name, head) for name in sorted(VARIANTS) for head in sorted(VARIANTS[name].model_classes)]
CAUSAL = sorted(name for name, variant in VARIANTS.items() if "AutoModelForCausalLM" in variant.model_classes)


#: Pattern sizes small enough that tiny inputs take the sparse / approximate path, not a dense fallback.
SMALL_PATTERNS = {
    "performer": {"num_random_features": 16},
    "local": {"block_size": 4, "dense_attention_below": 0},
    "longformer": {"attention_window": 4, "dense_attention_below": 0},
    "bigbird": {"block_size": 2, "num_random_blocks": 1, "dense_attention_below": 0},
    "sparse": {"stride": 4, "summary_size": 2, "dense_attention_below": 0},
    "axial": {"axial_shape": [4, 16], "dense_attention_below": 0},
    "linformer": {"projected_length": 8},
    "memory_compressed": {"compression_rate": 2},
    "inducing": {"num_inducing_points": 4},
    "nystrom": {"num_landmarks": 4},
}


def tiny_config(name: str, **fields):
    return get_variant(name).config_class(**TINY, **SMALL_PATTERNS.get(name, {}), **fields)


def test_every_variant_registers_with_auto_classes():
    for name, variant in VARIANTS.items():
        config = transformers.AutoConfig.for_model(f"effzoo-{name}", **TINY, **SMALL_PATTERNS.get(name, {}))
        assert type(config) is variant.config_class
        assert type(transformers.AutoModel.from_config(config)) is variant.model_classes["AutoModel"]
        assert getattr(effzoo, variant.config_class.__name__) is variant.config_class


@pytest.mark.parametrize("name, auto_name", VARIANT_HEADS)
def test_every_head_saves_and_reloads_identically(name, auto_name, tmp_path):
    model = get_variant(name).model_classes[auto_name](tiny_config(name)).eval()
    input_ids, mask = head_batch(auto_name)
    out = model(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
    if auto_name != "AutoModel":
        assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    again = getattr(transformers, auto_name).from_pretrained(tmp_path).eval()
    reloaded = again(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(reloaded[key], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_padding_invariance(name, padding):
    model = get_variant(name).model_classes["AutoModel"](tiny_config(name)).eval()
    input_ids, mask = random_batch(padding=padding)
    with torch.no_grad():
        batched = model(input_ids, attention_mask=mask).last_hidden_state
        for row in range(input_ids.shape[0]):
            real = mask[row].bool()
            alone = model(input_ids[row, real][None]).last_hidden_state[0]
            torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_generate_with_the_mechanism_cache_equals_the_causal_forward(name):
    model = get_variant(name).model_classes["AutoModelForCausalLM"](tiny_config(name)).eval()
    prompts = torch.randint(5, 99, (2, 6))
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0  # left padding
    generated = model.generate(prompts, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], dim=1)
    greedy = model(generated, attention_mask=full_mask, use_cache=False).logits.argmax(-1)
    torch.testing.assert_close(greedy[:, 5:-1], generated[:, 6:])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_converts_from_bert_with_only_mechanism_parameters_new(name, tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, name, tmp_path / name, progress=False)
    assert all(".mechanism." in key for key in report.new_parameters), report.new_parameters
    assert report.dropped == []
    model = transformers.AutoModel.from_pretrained(tmp_path / name).eval()
    assert type(model) is get_variant(name).model_classes["AutoModel"]
    input_ids, mask = random_batch()
    with torch.no_grad():
        hidden = model(input_ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_conversion_settings_reach_the_mechanism(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, "performer", tmp_path / "out", overrides={"num_random_features": 16},
                            progress=False)
    assert report.overrides == {"num_random_features": 16}
    model = effzoo.PerformerModel.from_pretrained(tmp_path / "out")
    assert model.encoder.layer[0].attention.self.mechanism.feature_map.projection.shape[0] == 16
    with pytest.raises(ValueError, match="num_random_features must be a positive integer"):
        effzoo.convert(source, "performer", tmp_path / "bad", overrides={"num_random_features": 0}, progress=False)
