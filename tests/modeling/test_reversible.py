"""Reversible layers (recomputation equals storing), chunked feed-forward, and their refusals."""

import pytest
import torch
from transformers import BertModel

import effzoo
from tests.conftest import TINY, random_batch, save_tiny_checkpoint

DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def reversible_config(**fields):
    return effzoo.FullConfig(**{**TINY, "num_hidden_layers": 3, "reversible": True, **fields})


def step(model, input_ids, mask, recompute: bool, seed: int = 3):
    """Outputs and parameter gradients of one training step, dropout drawn from ``seed``."""
    model.zero_grad(set_to_none=True)
    model.bert.encoder.recompute_reversible = recompute
    torch.manual_seed(seed)
    out = model(input_ids, attention_mask=mask, labels=torch.randint(0, 99, input_ids.shape))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("fields", [DROPOUT, {**DROPOUT, "num_experts": 4, "router_jitter_noise": 0.1},
                                    {**DROPOUT, "chunk_size_feed_forward": 5}], ids=["dense", "moe", "chunked"])
def test_recomputation_equals_the_same_network_storing_activations(fields):
    model = effzoo.FullForMaskedLM(reversible_config(**fields)).train()
    input_ids, mask = random_batch()
    recomputed, recomputed_grads = step(model, input_ids, mask, recompute=True)
    stored, stored_grads = step(model, input_ids, mask, recompute=False)
    torch.testing.assert_close(recomputed.logits, stored.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recomputed.loss, stored.loss, atol=1e-5, rtol=1e-5)
    assert recomputed_grads.keys() == stored_grads.keys()
    assert len(stored_grads) == sum(p.requires_grad for p in model.parameters())  # every parameter has one
    for name, grad in stored_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # Dropout is on: another seed gives other outputs, so the equality above is not trivial.
    other, _ = step(model, input_ids, mask, recompute=True, seed=4)
    assert not torch.allclose(other.logits, recomputed.logits)


def test_two_streams_split_and_merge_as_documented():
    model = effzoo.FullModel(reversible_config()).eval()
    input_ids, mask = random_batch()
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, output_hidden_states=True)
        embedded = model.embeddings(torch.arange(12).expand(3, -1).clamp(max=11), torch.zeros(3, 12, dtype=torch.long),
                                    input_ids)
        stream_1 = stream_2 = embedded
        for layer in model.encoder.layer:
            attention = layer.attention
            stream_1 = stream_1 + attention.output.dense(
                attention.self(attention.output.LayerNorm(stream_2), mask.bool(), False, None))
            stream_2 = stream_2 + layer.output.dense(layer.intermediate(layer.output.LayerNorm(stream_1)))
    real = mask.bool()
    expected = model.encoder.LayerNorm((stream_1 + stream_2) / 2)
    # Right padding: positions of real tokens are 0, 1, 2, … as above.
    torch.testing.assert_close(out.last_hidden_state[real], expected[real], atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == 4
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def saved_bytes(model, input_ids) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids)
    return total


def test_activations_kept_for_backward_do_not_grow_with_depth():
    input_ids = torch.randint(5, 99, (2, 32))
    kept = {}
    for reversible in (False, True):
        for layers in (2, 6):
            config = effzoo.FullConfig(**{**TINY, "num_hidden_layers": layers, "reversible": reversible})
            kept[reversible, layers] = saved_bytes(effzoo.FullModel(config).train(), input_ids)
    assert kept[True, 6] == kept[True, 2]  # flat in depth: the stack's outputs only
    assert kept[False, 6] > 2.5 * kept[False, 2]


def test_gradient_checkpointing_and_reversible_refuse_each_other():
    model = effzoo.FullForSequenceClassification(reversible_config())
    with pytest.raises(ValueError, match="Gradient checkpointing cannot be enabled on a model with reversible=True"):
        model.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="reversible=True"), pytest.warns(FutureWarning):
        model.gradient_checkpointing_enable()
    effzoo.FullModel(effzoo.FullConfig(**TINY)).activation_checkpointing_enable()  # the others still can


def test_reversible_and_ponder_refuse_each_other():
    with pytest.raises(ValueError, match="reversible=True and ponder=True cannot be combined"):
        reversible_config(ponder=True)


def test_generation_with_a_cache_equals_the_causal_forward():
    model = effzoo.FullForCausalLM(reversible_config()).eval()
    prompt = torch.randint(5, 99, (2, 5))
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    greedy = model(generated, use_cache=False).logits.argmax(-1)
    torch.testing.assert_close(greedy[:, 4:-1], generated[:, 5:])


def test_conversion_says_it_is_not_function_preserving(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    report = effzoo.convert(source, "full", tmp_path / "rev", overrides={"reversible": True}, progress=False)
    assert "reversible=True: not function-preserving" in str(report)
    assert set(report.new_parameters) == {"encoder.LayerNorm.weight", "encoder.LayerNorm.bias"}
    model = effzoo.FullModel.from_pretrained(tmp_path / "rev").eval()
    input_ids, mask = random_batch()
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask).last_hidden_state
        bert = BertModel.from_pretrained(source).eval()(input_ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all() and not torch.allclose(out, bert, atol=1e-2)
    torch.testing.assert_close(model.encoder.layer[0].intermediate.dense.weight,
                               BertModel.from_pretrained(source).encoder.layer[0].intermediate.dense.weight)


@pytest.mark.parametrize("reversible", [False, True])
def test_chunked_feed_forward_is_identical_with_chunk_sized_activations(reversible):
    input_ids, mask = random_batch()
    outputs, shapes = {}, {}
    for chunk in (0, 4):
        torch.manual_seed(0)
        config = effzoo.FullConfig(**{**TINY, "reversible": reversible, "chunk_size_feed_forward": chunk})
        model = effzoo.FullModel(config).train()
        seen = []
        model.encoder.layer[0].intermediate.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape))
        out = model(input_ids, attention_mask=mask).last_hidden_state
        out.pow(2).sum().backward()
        outputs[chunk] = (out, model.encoder.layer[0].intermediate.dense.weight.grad)
        shapes[chunk] = max(tuple(shape) for shape in seen)
    torch.testing.assert_close(outputs[4][0], outputs[0][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outputs[4][1], outputs[0][1], atol=1e-6, rtol=1e-5)
    assert shapes[0] == (3, 12, TINY["intermediate_size"]) and shapes[4] == (3, 4, TINY["intermediate_size"])
