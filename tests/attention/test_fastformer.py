"""Fastformer's additive attention against its sums written out by hand in float64.

The reference loops over sequences and heads in Python: the query pooling weights over the real
tokens, the global query, p_i = q_g ⊙ k_i, the key pooling weights, the global key, u_i = k_g ⊙ v_i,
then per token T [u over all heads] + b + q_i. Additive attention has no exact limit (it is not
softmax attention), so this written-out math is what the mechanism must return.
"""

from __future__ import annotations

import math

import pytest
import torch

from effzoo.attention.fastformer import FastformerAttention
from effzoo.configs.fastformer import FastformerConfig
from effzoo.modeling.fastformer import FastformerForMaskedLM, FastformerModel
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)
LENGTH = 19


def mechanism(trained: bool = True, **fields) -> FastformerAttention:
    """The mechanism, with random w_q, w_k and T (``trained``) so that every parameter takes part."""
    attention = FastformerAttention(FastformerConfig(**{**TINY, **fields})).eval()
    if trained:
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for parameter in attention.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return attention


def qkv(batch: int = 3, length: int = LENGTH, heads: int = 2, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(4)
    return [torch.randn(batch, heads, length, 8, generator=generator, dtype=dtype) for _ in range(3)]


def padding_mask(batch: int, length: int, padding: str | None) -> torch.Tensor | None:
    if padding is None:
        return None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        real = length - 6 * row
        mask[row] = torch.arange(length) < real if padding == "right" else torch.arange(length) >= length - real
    return mask


def reference(attention: FastformerAttention, q, k, v, mask) -> torch.Tensor:
    """Wu et al. 2021, eq. 3-6 and §3.2, per sequence and head, in float64."""
    batch, heads, length, dim = q.shape
    q, k, v = q.double(), k.double(), v.double()
    w_q, w_k = attention.query_pool.double(), attention.key_pool.double()
    weight, bias = attention.transform_weight.double(), attention.transform_bias.double()
    out = torch.zeros(batch, heads, length, dim, dtype=torch.float64)
    for b in range(batch):
        real = [p for p in range(length) if mask is None or mask[b, p]]
        u = torch.zeros(length, heads, dim, dtype=torch.float64)
        for h in range(heads):
            alpha = torch.softmax(torch.stack([w_q[h] @ q[b, h, i] for i in real]) / math.sqrt(dim), dim=0)
            global_query = sum(a * q[b, h, i] for a, i in zip(alpha, real))
            p = {i: global_query * k[b, h, i] for i in real}
            beta = torch.softmax(torch.stack([w_k[h] @ p[i] for i in real]) / math.sqrt(dim), dim=0)
            global_key = sum(c * p[i] for c, i in zip(beta, real))
            for i in real:
                u[i, h] = global_key * v[b, h, i]
        for i in real:
            r = (weight @ u[i].reshape(-1) + bias).view(heads, dim)
            out[b, :, i] = r + q[b, :, i]
    return out


@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_fastformer_equals_its_additive_sums_written_out(padding, device):
    attention = mechanism().to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(3, LENGTH, padding)
    out = attention(q, k, v, padding_mask=None if mask is None else mask.to(device))
    expected = reference(attention.cpu(), q.cpu(), k.cpu(), v.cpu(), mask)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=1e-5)


def test_gradients_equal_the_reference_parameters_included():
    attention = mechanism().double()
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(3, LENGTH, "left")
    inputs = (q, k, v, *attention.parameters())
    got = torch.autograd.grad(attention(q, k, v, padding_mask=mask).square().sum(), inputs)
    want = torch.autograd.grad(reference(attention, q, k, v, mask).square().sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_fresh_parameters_pool_by_plain_means_and_add_the_query():
    """w_q = w_k = 0 and T = identity: q_g is the mean real query, k_g = q_g ⊙ (mean real key), and
    the output is k_g ⊙ v_i + q_i."""
    attention = mechanism(trained=False)
    q, k, v = qkv()
    mask = padding_mask(3, LENGTH, "right")
    out = attention(q, k, v, padding_mask=mask)
    real = mask[:, None, :, None].float()
    count = real.sum(2, keepdim=True)
    global_query = (q * real).sum(2, keepdim=True) / count
    global_key = global_query * (k * real).sum(2, keepdim=True) / count
    torch.testing.assert_close(out, (global_key * v + q) * real, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_padding_invariance(padding):
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(3, LENGTH, padding)
    batched = attention(q, k, v, padding_mask=mask)
    for row in (1, 2):
        real = mask[row]
        alone = attention(q[row:row + 1, :, real], k[row:row + 1, :, real], v[row:row + 1, :, real])
        torch.testing.assert_close(batched[row][:, real], alone[0], atol=1e-5, rtol=1e-5)
        assert batched[row][:, ~real].abs().max() == 0


def test_a_sequence_without_real_tokens_gives_zeros_not_nan():
    attention = mechanism()
    q, k, v = qkv(batch=1)
    out = attention(q, k, v, padding_mask=torch.zeros(1, LENGTH, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))




def test_memory_grows_linearly():
    """The largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32).train()
    assert_memory_grows_linearly(attention, heads=4)


def test_eval_is_deterministic_and_save_load_gives_identical_outputs(tmp_path):
    config = FastformerConfig(**{**TINY, "vocab_size": 99, "num_hidden_layers": 2})
    torch.manual_seed(0)
    model = FastformerForMaskedLM(config).eval()
    with torch.no_grad():  # away from the start, so that every new parameter must be saved
        for layer in model.bert.encoder.layer:
            for parameter in layer.attention.self.mechanism.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = FastformerForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


def test_parameters_are_restored_after_meta_device_init():
    with torch.device("meta"):
        model = FastformerModel(FastformerConfig(**{**TINY, "vocab_size": 99}))
    model.to_empty(device="cpu")
    attention = model.encoder.layer[0].attention.self.mechanism
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.fill_(float("nan"))
    model.init_weights()
    assert torch.equal(attention.transform_weight, torch.eye(16)) and not attention.transform_bias.any()
    assert not attention.query_pool.any() and not attention.key_pool.any()


def test_a_causal_request_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"causal=True.*Call with causal=False"):
        mechanism()(*qkv(), causal=True)
    with pytest.raises(ValueError, match=r"is_decoder=True.*Set is_decoder=False"):
        FastformerConfig(**TINY, is_decoder=True)
    assert not FastformerAttention.supports_causal
