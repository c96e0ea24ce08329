"""The shared backbone: causal padding, outputs, checkpointing, and clear errors for bad input.

Padding invariance of every variant is in test_zoo.py."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

import effzoo
from effzoo.modeling import EffzooModel
from tests.conftest import TINY, random_batch


@pytest.fixture
def model(tiny_full_config):
    return effzoo.FullModel(tiny_full_config).eval()


def test_causal_padding_invariance(tiny_full_config):
    tiny_full_config.is_decoder = True
    model = effzoo.FullModel(tiny_full_config).eval()
    input_ids, mask = random_batch(padding="left")
    with torch.no_grad():
        batched = model(input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        real = mask[1].bool()
        alone = model(input_ids[1, real][None], use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(batched[1, real], alone, atol=1e-5, rtol=1e-5)


def test_hidden_states_and_tuple_outputs(model):
    input_ids, mask = random_batch()
    out = model(input_ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    as_tuple = model(input_ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)
    assert out.pooler_output.shape == (3, TINY["hidden_size"])


def test_inputs_embeds_equal_input_ids(model):
    input_ids, mask = random_batch()
    embeds = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(
        model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state,
        model(input_ids, attention_mask=mask).last_hidden_state,
    )


def test_too_long_input_says_how_to_extend(model):
    with pytest.raises(ValueError, match="max_position_embeddings=64.*effzoo convert .*--max-position-embeddings"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_attention_mask_of_wrong_shape(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 7\) but the input needs \(2, 8\)"):
        model(torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 7, dtype=torch.long))


def test_input_ids_of_wrong_rank(model):
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model(torch.ones(8, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_unknown_keyword_input_is_named(model):
    with pytest.raises(TypeError, match=r"\['global_attention_mask'\].*accepts these extra inputs: \['none'\]"):
        model(torch.ones(1, 4, dtype=torch.long), global_attention_mask=torch.ones(1, 4))


def test_shared_base_class_needs_a_variant(tiny_full_config):
    with pytest.raises(TypeError, match="no attention mechanism"):
        EffzooModel(tiny_full_config)


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        effzoo.FullConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer"):
        effzoo.FullConfig(num_hidden_layers=0)
    with pytest.raises(ValueError, match="attention_probs_dropout_prob must be in"):
        effzoo.FullConfig(attention_probs_dropout_prob=1.5)


@pytest.mark.parametrize("variant", ["full", "performer"])  # performer: its features' in-place backward
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    input_ids, mask = random_batch()

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.for_model(f"effzoo-{variant}", **TINY)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(input_ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)
