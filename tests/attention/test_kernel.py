"""Kernel attention (Performer FAVOR+, Linear Transformer, Hedgehog) against dense references.

Every kernel equals the explicit kernel matrix φ(Q)φ(K)ᵀ, masked and row-normalised; FAVOR+
converges to exact softmax attention as the number of random features grows; the chunked
causal form equals step-by-step decoding through the recurrent cache.
"""

from __future__ import annotations

import io

import pytest
import torch
from transformers import DynamicCache

from effzoo import HedgehogConfig, LinearConfig, PerformerConfig
from effzoo.attention.feature_maps import FavorSoftmaxFeatures
from effzoo.attention.kernel import KernelAttention, KernelAttentionCache
from effzoo.attention.reference import dense_reference_attention, padding_and_causal_pattern
from tests.attention.memory import largest_allocation

KERNELS = ["softmax", "relu", "elu", "hedgehog"]
HEADS, HEAD_DIM = 2, 8


#: The config class of each kernel: it holds the defaults and checks the fields.
CONFIG_CLASSES = {"softmax": PerformerConfig, "relu": PerformerConfig, "elu": LinearConfig, "hedgehog": HedgehogConfig}


def make_config(kernel: str = "softmax", /, **fields):
    """A tiny config of the kernel's variant: one layer, two heads of 8, 32 random features for FAVOR+."""
    config_class = CONFIG_CLASSES[kernel]
    base = dict(num_hidden_layers=1, num_attention_heads=HEADS, hidden_size=HEADS * HEAD_DIM,
                attention_probs_dropout_prob=0.0)
    if config_class is PerformerConfig:
        base.update(kernel=kernel, num_random_features=32)
    return config_class(**{**base, **fields})


def make(kernel: str = "softmax", **fields) -> KernelAttention:
    mechanism = KernelAttention(make_config(kernel, **fields)).eval()
    if kernel == "hedgehog":  # move W away from its identity init so the test means something
        with torch.no_grad():
            mechanism.feature_map.weight.add_(torch.randn_like(mechanism.feature_map.weight) * 0.3)
            mechanism.feature_map.bias.add_(torch.randn_like(mechanism.feature_map.bias) * 0.3)
    return mechanism


def qkv(batch: int = 3, length: int = 10, scale: float = 0.7, seed: int = 0, dim: int = HEAD_DIM, heads: int = HEADS):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3))
    return q * scale, k * scale, v


def padding(batch: int, length: int, side: str | None) -> torch.Tensor | None:
    """Rows with length, length-3, length-6, ... real tokens, padded on ``side``."""
    if side is None:
        return None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        real = max(length - 3 * row, 1)
        mask[row, :real] = True
    return mask if side == "right" else mask.flip(-1)


def kernel_reference(mechanism: KernelAttention, q, k, v, padding_mask, causal: bool) -> torch.Tensor:
    """The slow, obvious form: the L×L kernel matrix φ(Q)φ(K)ᵀ in float64, masked and normalised."""
    feature_map = mechanism.feature_map
    phi_q = feature_map(q.double(), is_query=True)
    phi_k, _ = feature_map.keys_with_log_scale(k.double(), padding_mask)
    allowed = padding_and_causal_pattern(padding_mask, q.shape[-2], k.shape[-2], causal)
    scores = (phi_q @ phi_k.transpose(-1, -2)) * allowed
    weights = (scores / scores.sum(-1, keepdim=True)).nan_to_num(0.0)
    return (weights @ v.double()).float()


def decode(mechanism: KernelAttention, q, k, v, padding_mask, prefill: int = 0) -> torch.Tensor:
    """Causal attention through the cache: a prefill of ``prefill`` tokens, then one token a step."""
    cache = KernelAttention.new_cache(make_config(mechanism.kernel))
    outputs, start = [], 0
    for stop in ([prefill] if prefill else []) + list(range(prefill + 1, q.shape[-2] + 1)):
        mask = None if padding_mask is None else padding_mask[:, :stop]
        step = slice(start, stop)
        outputs.append(
            mechanism(q[:, :, step], k[:, :, step], v[:, :, step], padding_mask=mask, causal=True, cache=cache)
        )
        assert cache.get_seq_length() == stop
        start = stop
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("side", [None, "right", "left"])
def test_equals_explicit_kernel_matrix(kernel: str, causal: bool, side: str | None) -> None:
    mechanism = make(kernel, causal_chunk_size=4)  # 4 does not divide the length 10
    q, k, v = qkv()
    mask = padding(3, 10, side)
    out = mechanism(q, k, v, padding_mask=mask, causal=causal)
    torch.testing.assert_close(out, kernel_reference(mechanism, q, k, v, mask, causal), atol=1e-5, rtol=1e-5)
    if mask is not None:
        assert out.masked_select(~mask[:, None, :, None]).abs().max() == 0


def favor_error(num_features: int, orthogonal: bool, seeds: range, scale: float = 0.5) -> float:
    """Mean |FAVOR+ − exact softmax attention| over seeds of the random features."""
    q, k, v = qkv(batch=1, length=32, scale=scale, seed=1234, dim=16, heads=4)
    exact = dense_reference_attention(q, k, v)
    config = make_config(num_attention_heads=4, hidden_size=64, num_random_features=num_features,
                         orthogonal_features=orthogonal)
    mechanism = KernelAttention(config).eval()
    errors = []
    for seed in seeds:
        mechanism.feature_map.redraw(torch.Generator().manual_seed(seed))
        errors.append((mechanism(q, k, v) - exact).abs().mean().item())
    return sum(errors) / len(errors)


@pytest.mark.parametrize("side", [None, "left"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_favor_values_and_gradients_equal_textbook_features(side: str | None, create_graph: bool) -> None:
    """The stabilised, fused FAVOR+ features against φ(x) = exp(ωᵀx̂ − ‖x̂‖²/2)/√m written out in
    float64 autograd: the stabilisers cancel in the output, so values and gradients must agree
    (first order through the in-place backward, and second order under ``create_graph``)."""
    mechanism = make("softmax")
    q, k, v = (t.double().requires_grad_() for t in qkv())
    padding_mask = padding(q.shape[0], q.shape[-2], side)
    out = mechanism(q, k, v, padding_mask=padding_mask)

    omega = mechanism.feature_map.projection.double()
    m = omega.shape[0]

    def textbook(x):
        x_hat = x * HEAD_DIM**-0.25
        return torch.exp(x_hat @ omega.T - x_hat.square().sum(-1, keepdim=True) / 2) / m**0.5

    scores = textbook(q) @ textbook(k).transpose(-1, -2)
    if padding_mask is not None:  # keys only: padded query rows stay finite, then are zeroed
        scores = scores * padding_mask[:, None, None, :]
    expected = scores / scores.sum(-1, keepdim=True) @ v
    if padding_mask is not None:
        expected = expected * padding_mask[:, None, :, None]
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    weights = torch.randn_like(out)
    gradients = torch.autograd.grad((out * weights).sum(), (q, k, v), create_graph=create_graph)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), (q, k, v), create_graph=create_graph)
    for got, want in zip(gradients, expected_gradients):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)
    if create_graph:  # the backward is differentiable too: a gradient penalty's second derivatives
        second = torch.autograd.grad(sum(g.square().sum() for g in gradients), (q, k, v))
        expected_second = torch.autograd.grad(sum(g.square().sum() for g in expected_gradients), (q, k, v))
        for got, want in zip(second, expected_second):
            torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)


def test_favor_backward_through_a_retained_graph_twice_gives_the_same_gradients() -> None:
    """The features' backward overwrites their saved output only when the graph is freed after it."""
    q, k, v = (t.requires_grad_() for t in qkv())
    out = (make("softmax")(q, k, v) * torch.randn(q.shape[:-1] + (v.shape[-1],))).sum()
    first = torch.autograd.grad(out, (q, k, v), retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_favor_converges_to_softmax_attention() -> None:
    errors = {m: favor_error(m, orthogonal=True, seeds=range(6)) for m in (16, 64, 256, 1024, 4096)}
    assert errors[4096] < errors[64] / 4, errors  # Monte Carlo: error ~ 1/√m, 8× in theory
    assert errors[4096] < errors[1024] < errors[256] < errors[64] < errors[16], errors
    assert errors[4096] < 0.01, errors


def test_orthogonal_features_beat_iid() -> None:
    orthogonal = favor_error(64, orthogonal=True, seeds=range(16))
    iid = favor_error(64, orthogonal=False, seeds=range(16))
    assert orthogonal < 0.9 * iid, (orthogonal, iid)  # measured ratio ≈ 0.81


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("side", [None, "left"])
@pytest.mark.parametrize("chunk", [3, 64])
def test_causal_chunks_equal_reference_and_decoding(kernel: str, side: str | None, chunk: int) -> None:
    mechanism = make(kernel, causal_chunk_size=chunk)
    q, k, v = qkv(length=11)
    k[:, :, 7] *= 3.0  # keys of other norms move FAVOR+'s key stabiliser: the cached state is rescaled
    mask = padding(3, 11, side)
    parallel = mechanism(q, k, v, padding_mask=mask, causal=True)
    torch.testing.assert_close(parallel, kernel_reference(mechanism, q, k, v, mask, True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode(mechanism, q, k, v, mask), parallel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decode(mechanism, q, k, v, mask, prefill=5), parallel, atol=1e-5, rtol=1e-5)


def test_cache_after_fully_padded_prefill() -> None:
    """A row that is all padding in the prefill (long left padding) starts from a zero state."""
    mechanism = make("softmax")
    q, k, v = qkv(batch=2, length=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :5] = False
    out = decode(mechanism, q, k, v, mask, prefill=4)
    torch.testing.assert_close(out, mechanism(q, k, v, padding_mask=mask, causal=True), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_invariance(kernel: str, causal: bool, side: str) -> None:
    """A sequence alone equals the same sequence padded inside a batch with a longer one."""
    mechanism = make(kernel, causal_chunk_size=4)
    q, k, v = qkv(batch=1, length=6)
    alone = mechanism(q, k, v, causal=causal)
    pad = 3
    garbage = torch.full((1, HEADS, pad, HEAD_DIM), 30.0)  # large values in the padding must not matter
    other = qkv(batch=1, length=6 + pad, seed=1)
    inputs = []
    for own, longer in zip((q, k, v), other):
        padded = torch.cat([own, garbage], 2) if side == "right" else torch.cat([garbage, own], 2)
        inputs.append(torch.cat([padded, longer]).requires_grad_())
    mask = torch.ones(2, 6 + pad, dtype=torch.bool)
    mask[0, slice(6, None) if side == "right" else slice(0, pad)] = False
    batched = mechanism(*inputs, padding_mask=mask, causal=causal)
    real = batched[:1, :, :6] if side == "right" else batched[:1, :, pad:]
    torch.testing.assert_close(real, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:], mechanism(*other, causal=causal), atol=1e-5, rtol=1e-5)
    batched.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def hybrid_reference(
    mechanism: KernelAttention, q, k, v, padding_mask, window: int | None, special_tokens: bool = False
) -> torch.Tensor:
    """LoLCATs' weights, explicitly: exp(s_ij - c_i) on the exact set (the query's block of
    real-token positions and its two neighbours, and with ``special_tokens`` the first and last real
    token; c_i the row's largest score there), φ(q_i)·φ(k_j) beyond, over real keys, normalised by
    their sum; float64."""
    length = q.shape[-2]
    real = torch.ones(q.shape[0], length, dtype=torch.bool) if padding_mask is None else padding_mask
    position = real.long().cumsum(-1) - 1  # among the real tokens
    exact = torch.zeros(q.shape[0], length, length, dtype=torch.bool)
    if window is not None:
        block = torch.div(position, window, rounding_mode="floor")
        exact |= (block[:, :, None] - block[:, None, :]).abs() <= 1
    if special_tokens:
        first_or_last = (position == 0) | (position == real.sum(-1, keepdim=True) - 1)
        exact |= first_or_last[:, None, :]
    keys = real[:, None, None, :]
    exact = exact[:, None] & keys
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    stabiliser = scores.masked_fill(~exact, float("-inf")).amax(-1, keepdim=True)
    stabiliser = stabiliser.masked_fill(stabiliser.isneginf(), 0.0)  # no exact key: keep the unused branch finite
    phi_q = mechanism.feature_map(q.double(), is_query=True)
    phi_k = mechanism.feature_map(k.double(), is_query=False)
    kernel = phi_q @ phi_k.transpose(-1, -2)
    weights = torch.where(exact, torch.exp(scores - stabiliser), kernel * keys).nan_to_num(0.0)
    out = (weights @ v.double()) / weights.sum(-1, keepdim=True)
    out = out.nan_to_num(0.0).masked_fill(~real[:, None, :, None], 0.0)
    return out.float()


@pytest.mark.parametrize("side", [None, "right", "left"])
@pytest.mark.parametrize(("window", "special_tokens"),
                         [(None, False), (3, False), (4, False), (16, False), (3, True), (None, True)])
def test_hybrid_equals_explicit_weights_with_gradients(side: str | None, window, special_tokens: bool) -> None:
    """Hedgehog, alone or with a softmax window (LoLCATs) and/or softmax special tokens, against
    the explicit L×L weights: values and gradients, the feature maps' included."""
    mechanism = make("hedgehog", hybrid_window=window, hybrid_special_tokens=special_tokens)
    q, k, v = (x.requires_grad_() for x in qkv(length=11, scale=1.5))
    mask = padding(3, 11, side)
    if side is not None:
        mask[2] = False
        mask[2, 4 if side == "right" else -5] = True  # one real token: first and last are the same
    out = mechanism(q, k, v, padding_mask=mask)
    expected = hybrid_reference(mechanism, q, k, v, mask, window, special_tokens)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    gradients = torch.autograd.grad((out * weights).sum(), (q, k, v, mechanism.feature_map.weight))
    expected_gradients = torch.autograd.grad((expected * weights).sum(), (q, k, v, mechanism.feature_map.weight))
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, atol=1e-5, rtol=1e-5)


def test_hybrid_window_covering_the_sequence_is_softmax_attention() -> None:
    """When the window holds every key, no kernel weight is left: exact softmax attention."""
    mechanism = make("hedgehog", hybrid_window=8)
    q, k, v = qkv(length=8, scale=1.5)
    expected = dense_reference_attention(q, k, v, padding_and_causal_pattern(None, 8, 8, False))
    torch.testing.assert_close(mechanism(q, k, v), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("special_tokens", [False, True])
def test_hybrid_window_is_padding_invariant(special_tokens: bool) -> None:
    mechanism = make("hedgehog", hybrid_window=2, hybrid_special_tokens=special_tokens)
    q, k, v = qkv(batch=1, length=7)
    alone = mechanism(q, k, v)
    padded = [torch.cat([torch.full((1, HEADS, 3, HEAD_DIM), 30.0), x], 2) for x in (q, k, v)]
    mask = torch.tensor([[False] * 3 + [True] * 7])
    torch.testing.assert_close(mechanism(*padded, padding_mask=mask)[:, :, 3:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hybrid_window": 0}, "hybrid_window"),
        ({"hybrid_window": 4, "is_decoder": True}, "bidirectional only"),
        ({"hybrid_special_tokens": 1}, "hybrid_special_tokens must be True or False"),
        ({"hybrid_special_tokens": True, "is_decoder": True}, "bidirectional only"),
    ],
)
def test_hybrid_window_bad_config(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        make("hedgehog", **fields)


def test_hybrid_refuses_a_config_made_causal_after_it_was_built() -> None:
    """A causal LM head sets ``is_decoder`` on a config already checked: the mechanism still refuses."""
    config = make_config("hedgehog", hybrid_window=4)
    config.is_decoder = True
    with pytest.raises(ValueError, match="bidirectional only"):
        KernelAttention(config)


@pytest.mark.parametrize("fields", [{"hybrid_window": 4}, {"hybrid_special_tokens": True}])
def test_hybrid_refuses_causal_calls(fields) -> None:
    with pytest.raises(ValueError, match="bidirectional only"):
        make("hedgehog", **fields)(*qkv(), causal=True)


def test_fully_padded_rows_are_zero_not_nan() -> None:
    """Values and gradients: a row with no real key divides by a clamped normaliser, not by zero."""
    for kernel in KERNELS:
        mechanism = make(kernel)
        q, k, v = (t.requires_grad_() for t in qkv(batch=2, length=5))
        mask = torch.zeros(2, 5, dtype=torch.bool)
        mask[0] = True
        for causal in (False, True):
            out = mechanism(q, k, v, padding_mask=mask, causal=causal)
            assert torch.isfinite(out).all() and out[1].abs().max() == 0
            for grad in torch.autograd.grad(out.square().sum() + out.sum(), (q, k, v)):
                assert torch.isfinite(grad).all() and grad[1].abs().max() == 0


@pytest.mark.parametrize("kernel", ["softmax", "hedgehog"])
def test_state_dict_round_trip_and_deterministic_eval(kernel: str) -> None:
    mechanism = make(kernel)
    q, k, v = qkv()
    out = mechanism(q, k, v)
    torch.testing.assert_close(mechanism(q, k, v), out, atol=0, rtol=0)
    buffer = io.BytesIO()
    torch.save(mechanism.state_dict(), buffer)
    torch.manual_seed(123)
    fresh = make(kernel)
    assert not torch.equal(fresh(q, k, v), out)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    torch.testing.assert_close(fresh(q, k, v), out, atol=0, rtol=0)
    if kernel == "softmax":
        assert "feature_map.projection" in mechanism.state_dict()


def test_redraw_only_in_training_and_on_schedule() -> None:
    mechanism = make("softmax", feature_redraw_interval=3)
    q, k, v = qkv()
    projections = []
    for _ in range(4):  # evaluation never redraws
        mechanism(q, k, v)
        projections.append(mechanism.feature_map.projection.clone())
    assert all(torch.equal(p, projections[0]) for p in projections)
    mechanism.train()
    seen = []
    for _ in range(7):
        mechanism(q, k, v)
        seen.append(mechanism.feature_map.projection.clone())
    changes = [i for i in range(1, 7) if not torch.equal(seen[i], seen[i - 1])]
    assert changes == [3, 6]  # each projection serves exactly 3 training calls
    assert torch.equal(seen[0], projections[0])

    # A redraw while a cache holds states made with the old features is an error, not silence.
    mechanism.eval()
    cache = KernelAttention.new_cache(make_config())
    mechanism(q[:, :, :4], k[:, :, :4], v[:, :, :4], causal=True, cache=cache)
    mechanism.feature_map.redraw()
    with pytest.raises(RuntimeError, match="redrawn"):
        mechanism(q[:, :, 4:5], k[:, :, 4:5], v[:, :, 4:5], causal=True, cache=cache)


def test_redraw_from_generator_is_reproducible() -> None:
    first, second = FavorSoftmaxFeatures(8, 20), FavorSoftmaxFeatures(8, 20)
    first.redraw(torch.Generator().manual_seed(5))
    second.redraw(torch.Generator().manual_seed(5))
    assert torch.equal(first.projection, second.projection)
    rows = first.projection.view(-1, 8)[:8]  # one orthogonal block: rows orthogonal
    gram = rows @ rows.T
    torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros(8, 8), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_autocast_long_sequence_with_bert_norms(kernel: str) -> None:
    """L = 8192, head_dim 32, q/k entries N(0, 1) (norms ≈ 5.7) and some rows of norm 20."""
    length, dim = 8192, 32
    fields = {"num_random_features": 64} if CONFIG_CLASSES[kernel] is PerformerConfig else {}
    mechanism = KernelAttention(make_config(kernel, num_attention_heads=1, hidden_size=dim, **fields))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, length, dim, generator=generator) for _ in range(3))
    for t in (q, k):
        rows = torch.randint(0, length, (64,), generator=generator)
        t[:, :, rows] *= 20.0 / t[:, :, rows].norm(dim=-1, keepdim=True)
    mask = torch.ones(1, length, dtype=torch.bool)
    mask[:, :100] = False
    for causal in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mechanism(q.bfloat16(), k.bfloat16(), v.bfloat16(), padding_mask=mask, causal=causal)
        assert out.dtype == torch.bfloat16
        assert torch.isfinite(out).all()
        assert out[:, :, 100:].abs().amax() > 0  # outputs are convex combinations of values: |out| ≤ max |v|
        assert out.float().abs().amax() <= v.abs().amax() * 1.01




def test_never_allocates_length_squared() -> None:
    length = 8192
    assert largest_allocation(lambda: torch.zeros(1024, 1024)) >= 1024 * 1024 * 4  # the probe sees allocations
    mechanism = KernelAttention(make_config(num_attention_heads=1, hidden_size=8, num_random_features=16))
    q, k, v = (torch.randn(1, 1, length, 8, requires_grad=True) for _ in range(3))
    for causal in (False, True):
        peak = largest_allocation(lambda causal=causal: mechanism(q, k, v, causal=causal).sum().backward())
        assert peak < length * length * 4 / 64, peak  # an L×L float32 tensor would be 268 MB; chunks are 2 MB


def test_hybrid_memory_is_linear_in_length() -> None:
    mechanism = make("hedgehog", hybrid_window=64, hybrid_special_tokens=True, num_attention_heads=1, hidden_size=8)

    def peak(length: int) -> int:
        q, k, v = (torch.randn(1, 1, length, 8, requires_grad=True) for _ in range(3))
        return largest_allocation(lambda: mechanism(q, k, v).sum().backward())

    small, large = peak(4096), peak(8192)
    assert large < 2.6 * small, (small, large)  # quadratic would be 4×
    assert large < 8192 * 8192 * 4 / 16


def test_cache_interface() -> None:
    cache = KernelAttention.new_cache(make_config("elu", num_hidden_layers=2))
    assert isinstance(cache, KernelAttentionCache) and len(cache.layers) == 2 and cache.get_seq_length() == 0
    mechanism = make("elu")
    q, k, v = qkv(batch=2, length=6)
    mechanism(q, k, v, causal=True, cache=cache)
    assert cache.get_seq_length() == 6 and cache.get_mask_sizes(1, 0) == (7, 0)
    state = cache.layers[0].recurrent_states[0]
    assert state.shape == (2, HEADS, HEAD_DIM, HEAD_DIM + 1) and state.dtype == torch.float32
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.layers[0].recurrent_states[0].shape[0] == 1 and cache.batch_size == 1
    cache.reset()
    assert cache.get_seq_length() == 0
    with pytest.raises(TypeError, match="KernelAttentionCache"):
        mechanism(q, k, v, causal=True, cache=DynamicCache())
    with pytest.raises(ValueError, match="padding_mask"):
        mechanism(q, k, v, padding_mask=torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kernel", "field", "value"),
    [
        ("softmax", "kernel", "gaussian"),
        ("softmax", "kernel", "hedgehog"),  # its fields live on HedgehogConfig
        ("elu", "kernel", "softmax"),
        ("softmax", "num_random_features", 0),
        ("relu", "num_random_features", 1.5),
        ("softmax", "orthogonal_features", "yes"),
        ("softmax", "feature_redraw_interval", 0),
        ("elu", "causal_chunk_size", -1),
        ("hedgehog", "hedgehog_feature_dim", True),
        ("softmax", "hidden_size", 15),
    ],
)
def test_bad_config_values(kernel: str, field: str, value) -> None:
    """The config checks its fields when it is built, naming the field."""
    with pytest.raises(ValueError, match=field):
        make_config(kernel, **{field: value})


@pytest.mark.parametrize("kernel", KERNELS)
def test_variant_configs_give_the_defaults(kernel: str) -> None:
    """The config's defaults are the mechanism's: 256 orthogonal features never redrawn, chunks of 64,
    Hedgehog's W of width head_dim and no softmax window."""
    config_class = CONFIG_CLASSES[kernel]
    fields = {"kernel": kernel} if config_class is PerformerConfig else {}
    mechanism = KernelAttention(config_class(**fields))
    assert (mechanism.kernel, mechanism.causal_chunk_size, mechanism.hybrid) == (kernel, 64, False)
    feature_map = mechanism.feature_map
    if kernel in ("softmax", "relu"):
        drawn = (feature_map.num_features, feature_map.orthogonal, feature_map.feature_redraw_interval)
        assert drawn == (256, True, None)
    else:
        assert feature_map.num_features == (64 if kernel == "elu" else 128)  # BERT-base head_dim 64


@pytest.mark.parametrize("kernel", KERNELS)
def test_context_is_laid_out_for_merging_heads_without_a_copy(kernel: str) -> None:
    """The layer merges heads with ``context.transpose(1, 2).reshape(batch, L, hidden)``: a view only
    when the context is (batch, L, heads, dim) in memory (at 16K a copy is a fresh 50 MB tensor)."""
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(batch=2, length=12))
    context = make(kernel)(q, k, v, padding_mask=None, causal=False)
    assert context.transpose(1, 2).is_contiguous()
