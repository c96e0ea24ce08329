"""The conventions of a Transformers model, checked on every registered variant and every head.

What Transformers' own ``ModelTesterMixin`` checks of a model, in tiny configs: Auto classes,
config switches, dtypes, meta-device initialisation, saving and loading, tied and resized
embeddings, ``inputs_embeds``, gradient checkpointing, feed-forward chunking, batching and
determinism. A new variant joins these tests by being registered in ``effzoo/variants.py``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from transformers.models.auto.auto_factory import _BaseAutoModelClass

import effzoo
from effzoo.modeling.backbone import EffzooPreTrainedModel
from effzoo.variants import VARIANTS, get_variant
from tests.conftest import TINY
from tests.modeling.test_heads import HEAD_INPUTS, head_batch
from tests.modeling.test_zoo import VARIANT_HEADS, tiny_config

NAMES = sorted(VARIANTS)
LANGUAGE_MODEL_HEADS = ("AutoModelForMaskedLM", "AutoModelForCausalLM")
AUTO_CLASSES = sorted(
    name for name in dir(transformers)
    if name.startswith("AutoModel") and isinstance(getattr(transformers, name), type)
    and issubclass(getattr(transformers, name), _BaseAutoModelClass)
)


def build(name: str, auto_name: str, **fields) -> EffzooPreTrainedModel:
    torch.manual_seed(0)
    return get_variant(name).model_classes[auto_name](tiny_config(name, **fields)).eval()


def run(model: torch.nn.Module, auto_name: str, **kwargs):
    input_ids, mask = head_batch(auto_name)
    return model(input_ids, attention_mask=mask, **{**HEAD_INPUTS[auto_name], **kwargs})


def assert_same_outputs(first, second, atol: float = 1e-6) -> None:
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(second[key], value, atol=atol, rtol=atol, msg=f"output {key} differs")


def weights_layout(name: str) -> str | None:
    return get_variant(name).model_classes["AutoModel"].mechanism_class.attention_weights_layout


# Auto classes and names


@pytest.mark.parametrize("name", NAMES)
def test_every_auto_class_gives_the_variants_model_or_a_value_error(name):
    config = tiny_config(name)
    variant = get_variant(name)
    for auto_name in AUTO_CLASSES:
        try:
            model = getattr(transformers, auto_name).from_config(config)
        except ValueError as refusal:
            assert name in str(refusal) or type(config).__name__ in str(refusal), (auto_name, str(refusal))
            assert auto_name not in variant.model_classes, f"{auto_name} is a head of {name} but refused"
            continue
        assert isinstance(model, EffzooPreTrainedModel), f"{auto_name} built {type(model).__module__}"
        assert type(model).__module__.startswith("effzoo."), type(model)


def test_causal_lm_of_a_bidirectional_variant_says_why():
    with pytest.raises(ValueError, match="cannot be causal.*AutoModelForMaskedLM"):
        transformers.AutoModelForCausalLM.from_config(tiny_config("bigbird"))


def test_no_effzoo_class_shares_a_name_with_transformers():
    for name in effzoo.__all__:
        if isinstance(getattr(effzoo, name), type):
            assert not hasattr(transformers, name), f"effzoo.{name} collides with transformers.{name}"


def test_former_class_names_warn_and_old_checkpoints_load(tmp_path):
    with pytest.warns(FutureWarning, match="EffzooBigBirdConfig"):
        assert effzoo.BigBirdConfig is effzoo.EffzooBigBirdConfig
    model = build("bigbird", "AutoModelForMaskedLM")
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    saved["architectures"] = ["BigBirdForMaskedLM"]  # as a checkpoint saved before the rename
    config_file.write_text(json.dumps(saved))
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is effzoo.EffzooBigBirdForMaskedLM
    assert_same_outputs(run(model, "AutoModelForMaskedLM"), run(reloaded, "AutoModelForMaskedLM"))


# Config switches


@pytest.mark.parametrize("name, auto_name", VARIANT_HEADS)
def test_output_switches_are_read_from_the_config(name, auto_name):
    model = build(name, auto_name)
    assert run(model, auto_name).hidden_states is None
    model.config.output_hidden_states = True
    hidden_states = run(model, auto_name).hidden_states
    assert len(hidden_states) == TINY["num_hidden_layers"] + 1
    assert run(model, auto_name, output_hidden_states=False).hidden_states is None  # the call wins

    model.config.output_attentions = True
    if weights_layout(name) is None:
        with pytest.raises(ValueError, match="has no attention weights"):
            run(model, auto_name)
    else:
        attentions = run(model, auto_name).attentions
        assert len(attentions) == TINY["num_hidden_layers"]
        assert attentions[0].is_sparse == (weights_layout(name) == "sparse")
    model.config.output_attentions = False

    model.config.return_dict = False
    as_tuple = run(model, auto_name)
    assert isinstance(as_tuple, tuple)
    model.config.return_dict = True
    first = next(value for value in run(model, auto_name).values() if value is not None)
    torch.testing.assert_close(as_tuple[0], first)


def test_router_logits_are_read_from_the_config():
    model = build("full", "AutoModel", num_experts=4)
    assert model(torch.ones(2, 5, dtype=torch.long)).router_logits is None
    model.config.output_router_logits = True
    assert len(model(torch.ones(2, 5, dtype=torch.long)).router_logits) == TINY["num_hidden_layers"]


# Dtypes and devices


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_in_half_precision(name, dtype):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(tiny_config(name), dtype=dtype).eval()
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}
    out = run(model, "AutoModel")
    assert out.last_hidden_state.dtype == dtype and torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize("name", NAMES)
def test_meta_device_initialisation_gives_a_working_model(name):
    reference = build(name, "AutoModelForMaskedLM")
    with torch.device("meta"):
        model = get_variant(name).model_classes["AutoModelForMaskedLM"](tiny_config(name))
    model.to_empty(device="cpu")
    with torch.no_grad():  # what to_empty leaves is arbitrary memory: make it NaN so that init must write it
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    model.init_weights()
    model.eval()
    for key, tensor in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items():
        assert torch.isfinite(tensor).all(), f"{key} is not finite after init on meta"
    assert torch.isfinite(run(model, "AutoModelForMaskedLM").logits).all()
    model.load_state_dict(reference.state_dict())  # the weights are then the whole model
    assert_same_outputs(run(reference, "AutoModelForMaskedLM"), run(model, "AutoModelForMaskedLM"))


# Saving and loading


@pytest.mark.parametrize("name, auto_name", VARIANT_HEADS)
def test_save_load_uses_safetensors_with_no_missing_or_unexpected_keys(name, auto_name, tmp_path):
    model = build(name, auto_name)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    reloaded, info = getattr(transformers, auto_name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert_same_outputs(run(model, auto_name), run(reloaded.eval(), auto_name))


@pytest.mark.parametrize("name", NAMES)
def test_heads_load_the_base_model_and_report_only_their_own_keys(name, tmp_path):
    build(name, "AutoModel").save_pretrained(tmp_path / "base")
    head, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("classifier.") for key in info["missing_keys"]), info
    head.save_pretrained(tmp_path / "head")
    _, info = transformers.AutoModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    assert not info["missing_keys"], info
    assert info["unexpected_keys"] and all(key.startswith("classifier.") for key in info["unexpected_keys"]), info


@pytest.mark.parametrize("name", NAMES)
def test_torch_save_and_load_of_the_whole_model(name, tmp_path):
    model = build(name, "AutoModelForSequenceClassification")
    torch.save(model, tmp_path / "model.pt")
    reloaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert_same_outputs(run(model, "AutoModelForSequenceClassification"),
                        run(reloaded, "AutoModelForSequenceClassification"))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name, tmp_path):
    config = tiny_config(name)
    config.save_pretrained(tmp_path)
    again = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(again) is type(config)
    assert {**again.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    assert type(config).from_dict(config.to_dict()).to_json_string() == config.to_json_string()
    assert copy.deepcopy(config).to_dict() == config.to_dict()


# Embeddings


@pytest.mark.parametrize("name, auto_name", [(n, a) for n in NAMES for a in LANGUAGE_MODEL_HEADS
                                             if a in VARIANTS[n].model_classes])
def test_language_model_heads_tie_and_resize_their_embeddings(name, auto_name, tmp_path):
    model = build(name, auto_name)
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    reloaded = getattr(transformers, auto_name).from_pretrained(tmp_path)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight

    model.resize_token_embeddings(TINY["vocab_size"] + 7)
    assert model.config.vocab_size == TINY["vocab_size"] + 7
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_output_embeddings().bias.shape == (TINY["vocab_size"] + 7,)
    input_ids = torch.full((2, 6), TINY["vocab_size"] + 6)
    assert model(input_ids).logits.shape == (2, 6, TINY["vocab_size"] + 7)


@pytest.mark.parametrize("name", NAMES)
def test_resize_token_embeddings_of_the_base_model(name):
    model = build(name, "AutoModel")
    model.resize_token_embeddings(TINY["vocab_size"] - 9)
    assert model.get_input_embeddings().weight.shape == (TINY["vocab_size"] - 9, TINY["hidden_size"])
    assert model.config.vocab_size == TINY["vocab_size"] - 9


@pytest.mark.parametrize("name, auto_name", VARIANT_HEADS)
def test_inputs_embeds_equal_input_ids(name, auto_name):
    model = build(name, auto_name)
    input_ids, mask = head_batch(auto_name)
    embeds = model.get_input_embeddings()(input_ids)
    with torch.no_grad():
        from_ids = model(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
        from_embeds = model(inputs_embeds=embeds, attention_mask=mask, **HEAD_INPUTS[auto_name])
    assert_same_outputs(from_ids, from_embeds)


# Training-time options


def loss_and_gradients(model: EffzooPreTrainedModel, auto_name: str) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad()
    torch.manual_seed(3)  # any randomness drawn per training forward (random blocks) draws alike
    loss = run(model, auto_name).loss
    loss.backward()
    return loss.detach(), {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_on_and_off_give_the_same_gradients(name):
    auto_name = "AutoModelForSequenceClassification"
    model = build(name, auto_name)
    loss, gradients = loss_and_gradients(model, auto_name)
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed_loss, checkpointed = loss_and_gradients(model, auto_name)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed.keys() == gradients.keys()
    for key, gradient in gradients.items():
        torch.testing.assert_close(checkpointed[key], gradient, atol=1e-5, rtol=1e-4, msg=key)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


@pytest.mark.parametrize("name", NAMES)
def test_feed_forward_chunking_is_exact(name):
    plain = build(name, "AutoModel")
    chunked = build(name, "AutoModel", chunk_size_feed_forward=5)
    chunked.load_state_dict(plain.state_dict())
    assert_same_outputs(run(plain, "AutoModel"), run(chunked, "AutoModel"), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_batching_equivalence_and_determinism_in_eval(name):
    model = build(name, "AutoModel")
    input_ids, mask = head_batch("AutoModel")
    with torch.no_grad():
        batched = model(input_ids, attention_mask=mask).last_hidden_state
        again = model(input_ids, attention_mask=mask).last_hidden_state
        assert torch.equal(batched, again), "two eval forwards differ"
        for row in range(input_ids.shape[0]):
            real = mask[row].bool()
            alone = model(input_ids[row : row + 1, real]).last_hidden_state[0]
            torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=1e-5, msg=f"row {row}")

