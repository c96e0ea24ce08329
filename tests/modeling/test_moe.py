"""Switch mixture-of-experts feed-forward: dispatch, capacity, losses, padding, heads, save/load, upcycling."""

import math

import pytest
import torch
import transformers
from transformers import AutoTokenizer, BertModel

import effzoo
from effzoo.modeling.moe import EffzooMoELayer
from effzoo.modeling.moe import load_balancing_loss, router_z_loss, within_capacity
from tests.conftest import TINY, random_batch, save_tiny_checkpoint


def moe_config(**fields):
    return effzoo.FullConfig(**{**TINY, "num_experts": 4, **fields})


def moe_layer(**fields):
    return EffzooMoELayer(moe_config(**fields), effzoo.FullModel.mechanism_class, 0).eval()


def reference_mixture(layer, hidden, routing):
    """Token by token: the gated sum of the served experts' outputs."""
    expected = torch.zeros_like(hidden)
    batch, length, top_k = routing.experts.shape
    for b in range(batch):
        for t in range(length):
            for slot in range(top_k):
                if routing.kept[b, t, slot]:
                    expert = layer.experts[int(routing.experts[b, t, slot])]
                    expected[b, t] += routing.gates[b, t, slot] * expert(hidden[b, t])
    return expected


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [4.0, 0.5])
def test_dispatch_equals_a_per_token_dense_reference(top_k, capacity_factor):
    layer = moe_layer(num_experts_per_token=top_k, eval_capacity_factor=capacity_factor)
    hidden = torch.randn(3, 12, TINY["hidden_size"])
    _, mask = random_batch()
    with torch.no_grad():
        mixture, routing = layer.mixture(hidden, mask.bool())
        probabilities = torch.nn.functional.linear(hidden, layer.router.weight).softmax(-1)
        expected = reference_mixture(layer, hidden, routing)
    torch.testing.assert_close(routing.experts, probabilities.topk(top_k, dim=-1).indices)
    torch.testing.assert_close(routing.gates.sum(-1), torch.ones(3, 12))  # the gates of a token sum to 1
    torch.testing.assert_close(mixture, expected, atol=1e-6, rtol=1e-5)
    assert (routing.dropped > 0) == (capacity_factor < 1)


def test_tokens_over_capacity_keep_their_residual_and_are_counted():
    layer = moe_layer(eval_capacity_factor=1.0)
    direction = torch.nn.functional.normalize(torch.randn(TINY["hidden_size"]), dim=0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = direction  # every token prefers expert 0
    hidden = torch.randn(1, 10, TINY["hidden_size"]) * 0.1 + 3 * direction
    with torch.no_grad():
        mixture, routing = layer.mixture(hidden, None)
        output = layer.output(mixture, hidden)
    capacity = math.ceil(1.0 * 10 * 1 / 4)  # capacity_factor · tokens · k / experts
    assert (routing.experts[..., 0] == 0).all()
    assert routing.kept[0, :, 0].tolist() == [True] * capacity + [False] * (10 - capacity)  # first come, first served
    assert int(routing.dropped) == 10 - capacity
    assert (mixture[0, capacity:] == 0).all()
    torch.testing.assert_close(output[0, capacity:], layer.output.LayerNorm(hidden[0, capacity:]))  # residual only
    torch.testing.assert_close(mixture[0, :capacity], layer.experts[0](hidden[0, :capacity]))


def test_second_choices_queue_behind_first_choices():
    experts = torch.tensor([[[0, 1], [0, 1], [1, 0]]])
    kept = within_capacity(experts, torch.ones(1, 3, dtype=torch.bool), torch.tensor([2]), num_experts=2)
    # expert 0: first choices of tokens 0, 1 fill it; expert 1: first choice of 2, then token 0's second.
    assert kept.tolist() == [[[True, True], [True, False], [True, False]]]


def test_aux_and_z_losses_equal_their_formulas():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [9.0, -9.0]]])  # the last token is padding
    real = torch.tensor([[True, True, True, False]])
    probabilities = logits.softmax(-1)
    experts = probabilities.topk(1, dim=-1).indices
    p = [[1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))],
         [1 - 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-1))],
         [1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))]]
    fraction = [2 / 3, 1 / 3]  # tokens 0 and 2 chose expert 0, token 1 expert 1
    mean_probability = [sum(row[i] for row in p) / 3 for i in range(2)]
    balance = 2 * sum(f * q for f, q in zip(fraction, mean_probability))  # E · Σ fᵢ Pᵢ
    z = sum(math.log(sum(math.exp(x) for x in row)) ** 2 for row in logits[0, :3].tolist()) / 3
    assert load_balancing_loss(probabilities, experts, real).item() == pytest.approx(balance, rel=1e-6)
    assert router_z_loss(logits, real).item() == pytest.approx(z, rel=1e-6)
    # Top-2 with both choices counted: the fractions are uniform, so the loss is Σᵢ Pᵢ · 1 = 1.
    top2 = probabilities.topk(2, dim=-1).indices
    assert load_balancing_loss(probabilities, top2, real).item() == pytest.approx(1.0, rel=1e-6)


def test_padding_is_never_routed_nor_counted():
    layer = moe_layer(eval_capacity_factor=1.0, num_experts_per_token=2)
    hidden = torch.randn(3, 12, TINY["hidden_size"])
    _, mask = random_batch()
    mask = mask.bool()
    hidden_with_garbage = hidden.masked_fill(~mask[..., None], 1e3)
    with torch.no_grad():
        routing = layer.router(hidden_with_garbage, mask)
        alone = [layer.router(hidden[row, mask[row]][None]) for row in range(3)]
        flat = layer.router(hidden[mask][None])  # every real token of the batch, no padding at all
    assert not routing.kept[~mask].any()
    assert int(routing.dropped) == sum(int(r.dropped) for r in alone)
    for row in range(3):  # capacity counts the row's real tokens only
        assert torch.equal(routing.kept[row, mask[row]], alone[row].kept[0])
        assert torch.equal(routing.experts[row, mask[row]], alone[row].experts[0])
    torch.testing.assert_close(routing.balance_loss, flat.balance_loss)
    torch.testing.assert_close(routing.z_loss, flat.z_loss)


def test_every_head_adds_the_router_losses_and_returns_the_logits_when_asked():
    config = moe_config(num_hidden_layers=4, encoder_sparse_step=2, num_labels=3)
    model = effzoo.FullForSequenceClassification(config).eval()
    assert [type(layer).__name__ for layer in model.bert.encoder.layer] == ["EffzooLayer", "EffzooMoELayer"] * 2
    input_ids, mask = random_batch()
    labels = torch.tensor([0, 2, 1])
    out = model(input_ids, attention_mask=mask, labels=labels, output_router_logits=True)
    task = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, task + 0.01 * out.aux_loss + 0.001 * out.z_loss)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (3, 12, 4)
    assert out.router_logits[0].dtype == torch.float32
    assert model(input_ids, attention_mask=mask).router_logits is None
    base = model.bert(input_ids, attention_mask=mask)
    assert base.dropped_tokens.shape == (2,)
    attentions = model(input_ids, attention_mask=mask, output_attentions=True).attentions
    assert len(attentions) == 4 and attentions[1].shape == (3, 4, 12, 12)  # mixture-of-experts layers too


def test_router_computes_in_float32_in_a_bfloat16_model():
    model = effzoo.FullModel(moe_config()).eval().to(torch.bfloat16)
    input_ids, mask = random_batch()
    out = model(input_ids, attention_mask=mask, output_router_logits=True)
    assert out.last_hidden_state.dtype == torch.bfloat16 and out.router_logits[0].dtype == torch.float32
    assert torch.isfinite(out.last_hidden_state).all()


def test_jitter_noise_only_in_training():
    layer = moe_layer(router_jitter_noise=0.5)
    hidden = torch.randn(2, 8, TINY["hidden_size"])
    evaluation = layer.router(hidden).logits
    torch.testing.assert_close(layer.router(hidden).logits, evaluation)
    torch.testing.assert_close(evaluation, torch.nn.functional.linear(hidden, layer.router.weight))
    assert not torch.allclose(layer.train().router(hidden).logits, evaluation)


def test_save_load_and_remote_code_identical(tmp_path):
    model = effzoo.FullForMaskedLM(moe_config(num_experts_per_token=2, eval_capacity_factor=1.0)).eval()
    input_ids, mask = random_batch()
    labels = torch.randint(0, 99, (3, 12))
    out = model(input_ids, attention_mask=mask, labels=labels, output_router_logits=True)
    model.save_pretrained(tmp_path)
    assert "encoder.layer.1.experts.3.output.dense.weight" in {k.removeprefix("bert.") for k in model.state_dict()}
    for options in ({}, {"trust_remote_code": True}):
        again = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, **options).eval()
        reloaded = again(input_ids, attention_mask=mask, labels=labels, output_router_logits=True)
        for name in ("loss", "logits", "aux_loss", "z_loss"):
            torch.testing.assert_close(reloaded[name], out[name], atol=0, rtol=0)
        torch.testing.assert_close(reloaded.router_logits, out.router_logits, atol=0, rtol=0)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="num_experts must be a non-negative integer.*got -1"):
        moe_config(num_experts=-1)
    with pytest.raises(ValueError, match=r"num_experts_per_token \(3\) is larger than num_experts \(2\)"):
        moe_config(num_experts=2, num_experts_per_token=3)
    with pytest.raises(ValueError, match="capacity_factor must be a number > 0.*got 0"):
        moe_config(capacity_factor=0)
    with pytest.raises(ValueError, match="eval_capacity_factor must be a number > 0.*got -1.0"):
        moe_config(eval_capacity_factor=-1.0)
    with pytest.raises(ValueError, match="encoder_sparse_step must be a positive integer"):
        moe_config(encoder_sparse_step=0)


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_model_equals_its_dense_source(top_k, tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, "full", tmp_path / "moe", progress=False, overrides={
        "num_experts": 4, "num_experts_per_token": top_k, "eval_capacity_factor": 4.0})
    assert set(report.new_parameters) == {f"encoder.layer.{i}.router.weight" for i in range(2)}
    assert "copied into each of 4 experts" in str(report)
    model = effzoo.FullModel.from_pretrained(tmp_path / "moe").eval()
    layer = model.encoder.layer[1]
    torch.testing.assert_close(layer.experts[3].output.dense.weight, layer.experts[0].output.dense.weight)
    input_ids, mask = random_batch()
    with torch.no_grad():
        expected = BertModel.from_pretrained(source).eval()(input_ids, attention_mask=mask).last_hidden_state
        out = model(input_ids, attention_mask=mask)
    assert out.dropped_tokens.sum() == 0
    real = mask.bool()
    assert (out.last_hidden_state[real] - expected[real]).abs().max() < 1e-5


@pytest.mark.real_checkpoint
def test_upcycled_minilm_reproduces_its_source(minilm_path, tmp_path):
    from tests.conversion.test_real_minilm import SENTENCES

    effzoo.convert(minilm_path, "full", tmp_path / "moe", progress=False,
                   overrides={"num_experts": 8, "eval_capacity_factor": 8.0})
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "moe")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = BertModel.from_pretrained(minilm_path).eval()(**batch)
        actual = effzoo.FullModel.from_pretrained(tmp_path / "moe").eval()(**batch)
    assert actual.dropped_tokens.sum() == 0
    real = batch["attention_mask"].bool()
    assert (actual.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() < 1e-5
    assert (actual.pooler_output - expected.pooler_output).abs().max() < 1e-5
