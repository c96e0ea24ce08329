"""Memory-compressed attention against exact softmax attention over windows built as the definition says.

The reference works in Python: it lists a row's real tokens that are not special, cuts them into
windows of ``compression_rate`` consecutive ones, convolves each window (Σ_t W_t x_t over its m tokens,
times rate / m, plus the bias), and runs ``dense_reference_attention`` for each query over the keys
the definition gives it: bidirectional, every window and the special tokens; causal, its own window's
tokens up to itself, exact, the earlier windows compressed, and the first real token.
"""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.full import FullAttention
from effzoo.attention.memory_compressed import MemoryCompressedAttention
from effzoo.attention.reference import dense_reference_attention
from effzoo.configs.memory_compressed import MemoryCompressedConfig
from effzoo.modeling.memory_compressed import MemoryCompressedForCausalLM, MemoryCompressedForMaskedLM, MemoryCompressedModel
from tests.attention.inputs import LENGTH, padding_mask, qkv
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)


def config(**fields) -> MemoryCompressedConfig:
    return MemoryCompressedConfig(**{**TINY, "compression_rate": 3, **fields})


def mechanism(**fields) -> MemoryCompressedAttention:
    return MemoryCompressedAttention(config(**fields)).eval()


def randomise(attention: MemoryCompressedAttention, seed: int = 1) -> MemoryCompressedAttention:
    """Kernels and biases away from averaging, so that every window position and the scaling matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return attention


def window_rows(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, tokens: list[int], rate: int) -> list:
    """The convolution of each window of ``tokens`` (positions into ``x`` (L, d)), from the definition."""
    rows = []
    for start in range(0, len(tokens), rate):
        window = tokens[start:start + rate]
        total = sum(weight[:, :, t] @ x[p] for t, p in enumerate(window))
        rows.append(total * rate / len(window) + bias)
    return rows


def reference(attention: MemoryCompressedAttention, q, k, v, mask, causal: bool) -> torch.Tensor:
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    weights = [p.detach().double() for p in (attention.key_weight, attention.key_bias,
                                               attention.value_weight, attention.value_bias)]
    batch, heads, length, _ = q.shape
    rate = attention.rate
    real = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask
    out = torch.zeros_like(q)
    for b in range(batch):
        positions = [p for p in range(length) if real[b, p]]
        special = [] if not attention.global_special_tokens or not positions else \
            [positions[0]] if causal else sorted({positions[0], positions[-1]})
        tokens = [p for p in positions if p not in special]
        for h in range(heads):
            keys = window_rows(weights[0], weights[1], k[b, h], tokens, rate)
            values = window_rows(weights[2], weights[3], v[b, h], tokens, rate)
            for p in positions:
                if causal:
                    rank = sum(1 for t in tokens if t <= p) - 1
                    window = rank // rate if rank >= 0 else -1
                    own = [t for r, t in enumerate(tokens) if r // rate == window and r <= rank]
                    seen_k = [k[b, h, t] for t in own + special] + keys[:max(window, 0)]
                    seen_v = [v[b, h, t] for t in own + special] + values[:max(window, 0)]
                else:
                    seen_k = keys + [k[b, h, t] for t in special]
                    seen_v = values + [v[b, h, t] for t in special]
                context = dense_reference_attention(q[b, h, p][None, None, None], torch.stack(seen_k)[None, None],
                                                    torch.stack(seen_v)[None, None])
                out[b, h, p] = context[0, 0, 0]
    return out.to(dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("special_tokens", [True, False])
def test_rate_one_equals_full_attention(causal, padding, special_tokens, device):
    attention = mechanism(compression_rate=1, global_special_tokens=special_tokens).to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(2, LENGTH, padding)
    mask = None if mask is None else mask.to(device)
    expected = FullAttention(config()).eval()(q, k, v, padding_mask=mask, causal=causal)
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask, causal=causal), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("special_tokens", [True, False])
@pytest.mark.parametrize("rate", [2, 3, 4])
def test_equals_the_reference_written_from_the_definition(causal, padding, special_tokens, rate, device):
    attention = randomise(mechanism(compression_rate=rate, global_special_tokens=special_tokens)).double().to(device)
    q, k, v = qkv(dtype=torch.float64)
    mask = padding_mask(2, LENGTH, padding)
    out = attention(q.to(device), k.to(device), v.to(device), padding_mask=None if mask is None else mask.to(device),
                    causal=causal)
    expected = reference(attention.cpu(), q, k, v, mask, causal)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-8, rtol=1e-8)


def test_averaging_start_is_the_mean_of_each_window_of_real_tokens():
    """17 tokens besides the special ones at rate 3: five windows of 3 and a last of 2, each its mean."""
    attention = mechanism()
    q, k, v = qkv(batch=1)
    out = attention(q, k, v)
    tokens = torch.arange(1, LENGTH - 1)
    groups = list(tokens.split(3))
    keys = torch.stack([k[0, :, g].mean(1) for g in groups] + [k[0, :, 0], k[0, :, -1]], 1)
    values = torch.stack([v[0, :, g].mean(1) for g in groups] + [v[0, :, 0], v[0, :, -1]], 1)
    torch.testing.assert_close(out, dense_reference_attention(q, keys[None], values[None]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_the_reference(causal):
    attention = randomise(mechanism()).double()
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, LENGTH, "left")
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = torch.autograd.grad(reference(attention, q, k, v, mask, causal).square().sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-8)


def test_no_future_token_reaches_a_causal_query():
    attention = randomise(mechanism())
    q, k, v = (x.requires_grad_() for x in qkv(batch=1))
    out = attention(q, k, v, causal=True)
    for position in range(LENGTH):
        grads = torch.autograd.grad(out[:, :, position].sum(), (q, k, v), retain_graph=True)
        for grad in grads:
            assert not grad[:, :, position + 1:].any(), f"query {position} reads a later token"
        assert grads[2][:, :, : position + 1].abs().max() > 0  # it does read its past


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(padding, causal):
    attention = randomise(mechanism())
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, padding)
    batched = attention(q, k, v, padding_mask=mask, causal=causal)
    real = mask[1]
    alone = attention(q[1:, :, real], k[1:, :, real], v[1:, :, real], causal=causal)
    torch.testing.assert_close(batched[1][:, real], alone[0], atol=1e-5, rtol=1e-5)
    assert batched[1][:, ~real].abs().max() == 0


@pytest.mark.parametrize("special_tokens", [True, False])
def test_decoding_with_a_cache_equals_the_causal_forward(special_tokens):
    attention = randomise(mechanism(global_special_tokens=special_tokens))
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "left")
    parallel = attention(q, k, v, padding_mask=mask, causal=True)
    cache = MemoryCompressedAttention.new_cache(config())
    steps = [attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], padding_mask=mask[:, :7], causal=True, cache=cache)]
    for position in range(7, LENGTH):
        step = slice(position, position + 1)
        steps.append(attention(q[:, :, step], k[:, :, step], v[:, :, step], padding_mask=mask[:, : position + 1],
                               causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, atol=1e-5, rtol=1e-5)


def test_a_row_without_tokens_gives_zeros():
    attention = mechanism()
    q, k, v = qkv(length=4)
    mask = torch.tensor([[False] * 4, [False, True, True, False]])
    for causal in (False, True):
        out = attention(q, k, v, padding_mask=mask, causal=causal)
        assert torch.isfinite(out).all() and out[0].abs().max() == 0 and out[1][:, [0, 3]].abs().max() == 0


def test_bidirectional_memory_grows_linearly():
    """The L × L / rate scores are never stored (one fused SDPA call under a key mask): the largest allocation
    of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32, max_position_embeddings=8192).train()
    assert_memory_grows_linearly(attention, heads=4, quadratic_share=1 / 3)


def test_eval_is_deterministic_and_save_load_gives_identical_outputs(tmp_path):
    # The registry's save hook writes remote code for a registered variant; this test needs only the weights.
    torch.manual_seed(0)
    model = MemoryCompressedForMaskedLM(config(vocab_size=99, num_hidden_layers=2)).eval()
    randomise(model.bert.encoder.layer[1].attention.self.mechanism)
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = MemoryCompressedForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


def test_averaging_is_restored_after_meta_init():
    with torch.device("meta"):
        model = MemoryCompressedModel(config(vocab_size=99))
    model.to_empty(device="cpu")
    model.init_weights()
    attention = model.encoder.layer[0].attention.self.mechanism
    torch.testing.assert_close(attention.key_weight, (torch.eye(8) / 3)[..., None].expand(8, 8, 3))
    torch.testing.assert_close(attention.value_bias, torch.zeros(8))


def test_generate_matches_the_causal_forward():
    model = MemoryCompressedForCausalLM(config(vocab_size=99, num_hidden_layers=2)).eval()
    prompts = torch.randint(5, 99, (2, 8))
    mask = torch.ones_like(prompts)
    mask[1, :3] = 0
    generated = model.generate(prompts, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        logits = model(generated, attention_mask=full_mask).logits
    assert torch.equal(logits[:, 7:-1].argmax(-1), generated[:, 8:])


@pytest.mark.parametrize("value", [0, 2.5, True, "3"])
def test_a_bad_compression_rate_is_refused(value):
    with pytest.raises(ValueError, match="compression_rate"):
        config(compression_rate=value)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype, causal):
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "left")
    expected = attention(q, k, v, padding_mask=mask, causal=causal)
    out = attention.to(dtype)(q.to(dtype), k.to(dtype), v.to(dtype), padding_mask=mask, causal=causal)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
