"""The backbone parts that Reformer needs, as options of every variant: axial position embeddings
(equal to Transformers' own), per-layer attention settings, and their bad inputs."""

import pytest
import torch
from transformers import ReformerConfig
from transformers.models.reformer.modeling_reformer import AxialPositionEmbeddings as TransformersAxial

import effzoo
from effzoo.modeling.position_embeddings import AxialPositionEmbeddings
from tests.conftest import TINY, random_batch
from tests.modeling.test_zoo import tiny_config

AXIAL = {"axial_pos_embds": True, "axial_pos_shape": [8, 8], "axial_pos_embds_dim": [8, 24]}


def test_axial_embeddings_equal_transformers_with_the_same_weights():
    ours = AxialPositionEmbeddings(effzoo.FullConfig(**TINY, **AXIAL))
    theirs = TransformersAxial(ReformerConfig(hidden_size=32, axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 24],
                                              max_position_embeddings=64, axial_pos_embds=True)).eval()
    with torch.no_grad():
        for weight in ours.weights:
            weight.normal_()
    theirs.load_state_dict({f"weights.{i}": weight for i, weight in enumerate(ours.weights)})
    positions = torch.stack([torch.arange(40), torch.arange(7, 47)])
    torch.testing.assert_close(ours(positions), theirs(positions), atol=0, rtol=0)


def test_axial_embeddings_have_a_parameter_per_axis_cell_not_per_position():
    model = effzoo.FullModel(effzoo.FullConfig(**TINY, **AXIAL))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if "position_embeddings" in name}
    assert shapes == {"embeddings.position_embeddings.weights.0": (8, 1, 8),
                      "embeddings.position_embeddings.weights.1": (1, 8, 24)}


def test_axial_weights_are_initialised_after_meta_device_construction():
    config = effzoo.FullConfig(**TINY, **AXIAL)
    with torch.device("meta"):
        model = effzoo.FullModel(config)
    model.to_empty(device="cpu")
    model.init_weights()
    weights = list(model.embeddings.position_embeddings.weights)
    assert all(torch.isfinite(w).all() and 0.005 < float(w.detach().std()) < 0.05 for w in weights)
    input_ids, mask = random_batch()
    assert torch.isfinite(model(input_ids, attention_mask=mask).last_hidden_state).all()


def test_a_position_outside_the_axial_grid_is_a_clear_error():
    model = effzoo.FullModel(effzoo.FullConfig(**{**TINY, "max_position_embeddings": 16}, **{
        **AXIAL, "axial_pos_shape": [4, 4]}))
    with pytest.raises(ValueError, match="outside the axial position grid"):
        model.embeddings(input_ids=torch.zeros(1, 4, dtype=torch.long), position_ids=torch.tensor([[0, 1, 2, 16]]),
                         token_type_ids=torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("fields, message", [
    ({"axial_pos_shape": [64]}, "lists of positive integers of the same length"),
    ({"axial_pos_embds_dim": [8, 8]}, "must sum to hidden_size"),
    ({"axial_pos_shape": [4, 8]}, "fewer than max_position_embeddings"),
])
def test_bad_axial_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        effzoo.FullConfig(**TINY, **{**AXIAL, **fields})


def test_tied_embeddings_with_a_concatenated_lm_input_are_refused():
    with pytest.raises(ValueError, match="tie_word_embeddings=False or lm_head_transform=True"):
        effzoo.FullConfig(**TINY, reversible=True, reversible_merge="concat", lm_head_transform=False)


def test_layer_attention_builds_each_layer_from_its_own_settings():
    config = tiny_config("local", layer_attention=[{"block_size": 2}, {}])
    model = effzoo.LocalModel(config)
    assert [layer.attention.self.mechanism.block_size for layer in model.encoder.layer] == [2, 4]
    assert config.block_size == 4 and config.layer_config(1) is config


def test_layer_attention_equal_to_the_config_changes_nothing_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain = effzoo.LocalModel(tiny_config("local")).eval()
    torch.manual_seed(0)
    same = effzoo.LocalModel(tiny_config("local", layer_attention=[{"block_size": 4}, {}])).eval()
    input_ids, mask = random_batch()
    with torch.no_grad():
        expected = plain(input_ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(same(input_ids, attention_mask=mask).last_hidden_state, expected, atol=0, rtol=0)
    mixed = effzoo.LocalModel(tiny_config("local", layer_attention=[{"block_size": 2}, {}]))
    mixed.save_pretrained(tmp_path)
    reloaded = effzoo.LocalModel.from_pretrained(tmp_path)
    assert reloaded.config.layer_attention == [{"block_size": 2}, {}]
    assert reloaded.encoder.layer[0].attention.self.mechanism.block_size == 2


@pytest.mark.parametrize("layer_attention, message", [
    ([{"block_size": 2}], "must be a list of 2 dicts"),
    ([{"hidden_size": 8}, {}], r"sets \['hidden_size'\], which are not attention fields"),
    ([{"block_size": 0}, {}], "block_size"),
])
def test_bad_layer_attention_names_the_layer_and_field(layer_attention, message):
    with pytest.raises(ValueError, match=message):
        tiny_config("local", layer_attention=layer_attention)


def test_a_variant_without_attention_fields_takes_only_a_per_layer_dropout():
    with pytest.raises(ValueError, match=r"its attention fields are \['attention_probs_dropout_prob'\]"):
        effzoo.FullConfig(**TINY, layer_attention=[{"block_size": 2}, {}])
    model = effzoo.FullModel(effzoo.FullConfig(**TINY, layer_attention=[{"attention_probs_dropout_prob": 0.3}, {}]))
    assert [layer.attention.self.mechanism.dropout for layer in model.encoder.layer] == [0.3, 0.0]
