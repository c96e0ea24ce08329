"""Every backbone option works with every registered variant (tiny configs, seeded)."""

import pytest
import torch
import transformers

from effzoo.variants import VARIANTS, get_variant
from tests.conftest import TINY, random_batch
from tests.modeling.test_zoo import SMALL_PATTERNS

NAMES = sorted(VARIANTS)
DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def model_of(name, auto_name, **fields):
    config = get_variant(name).config_class(**{**TINY, **SMALL_PATTERNS.get(name, {}), **fields})
    return get_variant(name).model_classes[auto_name](config)


@pytest.mark.parametrize("name", NAMES)
def test_mixture_of_experts(name, tmp_path):
    fields = {"num_experts": 4, "num_experts_per_token": 2, "eval_capacity_factor": 1.0}
    model = model_of(name, "AutoModelForMaskedLM", **fields).train()
    input_ids, mask = random_batch()
    out = model(input_ids, attention_mask=mask, labels=torch.randint(0, 99, (3, 12)), output_router_logits=True)
    assert torch.isfinite(out.loss) and out.aux_loss is not None and len(out.router_logits) == 2
    out.loss.backward()
    assert model.bert.encoder.layer[0].router.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # padding invariance: capacity is per sequence, padding is never routed
        batched = model.bert(input_ids, attention_mask=mask).last_hidden_state
        for row in range(3):
            real = mask[row].bool()
            alone = model.bert(input_ids[row, real][None]).last_hidden_state[0]
            torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=1e-5)
        expected = model(input_ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids, attention_mask=mask).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_reversible_recomputation_equals_storing(name):
    model = model_of(name, "AutoModelForSequenceClassification", reversible=True, **DROPOUT).train()
    input_ids, mask = random_batch()
    results = []
    for recompute in (True, False):
        model.zero_grad(set_to_none=True)
        model.bert.encoder.recompute_reversible = recompute
        torch.manual_seed(3)
        out = model(input_ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
        out.loss.backward()
        results.append((out.logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (logits, grads), (stored_logits, stored_grads) = results
    torch.testing.assert_close(logits, stored_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == stored_grads.keys() and len(grads) > 20
    for key in grads:
        torch.testing.assert_close(grads[key], stored_grads[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_feed_forward(name):
    input_ids, mask = random_batch()
    outputs = []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = model_of(name, "AutoModel", chunk_size_feed_forward=chunk).eval()
        with torch.no_grad():
            outputs.append(model(input_ids, attention_mask=mask).last_hidden_state)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_ponder(name):
    model = model_of(name, "AutoModelForSequenceClassification", ponder=True, num_hidden_layers=3).train()
    input_ids, mask = random_batch()
    out = model(input_ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.halting.weight.grad is not None
    torch.manual_seed(2)
    with torch.no_grad():
        model.halting.weight.normal_(0, 4.0)
    model.eval()
    with torch.no_grad():
        batched = model(input_ids, attention_mask=mask)
        for row in range(3):
            real = mask[row].bool()
            alone = model(input_ids[row, real][None])
            assert alone.layers_used.item() == batched.layers_used[row].item()
            torch.testing.assert_close(alone.logits[0], batched.logits[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(n for n, v in VARIANTS.items() if "AutoModelForCausalLM" in v.model_classes))
def test_generation_with_experts_and_reversible_layers_equals_the_causal_forward(name):
    # With capacity for every token, one token at a time routes as the whole sequence does.
    model = model_of(name, "AutoModelForCausalLM", num_experts=4, eval_capacity_factor=4.0, reversible=True).eval()
    prompts = torch.randint(5, 99, (2, 6))
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0  # left padding
    generated = model.generate(prompts, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    full_mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1)
    greedy = model(generated, attention_mask=full_mask, use_cache=False).logits.argmax(-1)
    torch.testing.assert_close(greedy[:, 5:-1], generated[:, 6:])


REFORMER_PARTS = {
    "reversible": True, "reversible_merge": "concat", "axial_pos_embds": True, "axial_pos_shape": [8, 8],
    "axial_pos_embds_dim": [8, 24], "embedding_layer_norm": False, "lm_head_transform": False,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize("name", NAMES)
def test_reformer_parts_serve_every_head(name, tmp_path):
    """Axial positions, no embedding LayerNorm, concatenated reversible streams read by every head,
    the LM head without its transform: every variant and head runs, keeps right padding out of the
    real tokens' states, and saves -> loads identically."""
    from tests.modeling.test_heads import HEAD_INPUTS, head_batch

    for auto_name in get_variant(name).model_classes:
        model = model_of(name, auto_name, **REFORMER_PARTS).eval()
        input_ids, mask = head_batch(auto_name)
        with torch.no_grad():
            out = model(input_ids, attention_mask=mask, output_hidden_states=True, **HEAD_INPUTS[auto_name])
        if auto_name != "AutoModel":
            assert torch.isfinite(out.loss), auto_name
        if auto_name in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM"):
            assert all(state.shape[-1] == 64 for state in out.hidden_states), auto_name
        model.save_pretrained(tmp_path / auto_name)
        reloaded = getattr(transformers, auto_name).from_pretrained(tmp_path / auto_name).eval()
        with torch.no_grad():
            again = reloaded(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
        torch.testing.assert_close(again.loss if auto_name != "AutoModel" else again.last_hidden_state,
                                   out.loss if auto_name != "AutoModel" else out.last_hidden_state, atol=0, rtol=0)
    base = model_of(name, "AutoModel", **REFORMER_PARTS).eval()
    assert base.embeddings.LayerNorm is None and base.encoder.LayerNorm.normalized_shape == (64,)
    input_ids, mask = random_batch()
    with torch.no_grad():
        batched = base(input_ids, attention_mask=mask).last_hidden_state
        for row in range(3):
            real = mask[row].bool()
            alone = base(input_ids[row, real][None]).last_hidden_state[0]
            torch.testing.assert_close(batched[row, real], alone, atol=1e-5, rtol=1e-5)
