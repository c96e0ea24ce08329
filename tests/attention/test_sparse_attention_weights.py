"""``output_attentions=True`` on the sparse patterns: a sparse COO tensor of exactly the attended pairs.

The weights are compared with the dense softmax under the reference patterns of
``test_sparse_patterns.py`` (written from the papers, independently of the engine's layouts).
"""

from __future__ import annotations

import math

import pytest
import torch

import effzoo
from effzoo.variants import VARIANTS

from ..conftest import TINY
from .test_sparse_patterns import (
    CASES,
    CAUSAL_CASES,
    HEADS,
    LENGTHS,
    build,
    hidden_inputs,
    padding_mask,
    qkv,
    reference_allowed,
)

SPARSE_VARIANTS = [name for name, variant in VARIANTS.items()
                   if variant.model_classes["AutoModel"].mechanism_class.attention_weights_layout == "sparse"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def softmax_under(q, k, allowed):
    """Dense softmax(q kᵀ / √d) restricted to ``allowed``, float64; rows with no key are zeros."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)


def reference_weights(q, k, allowed, global_rows, global_qkv, mask):
    """The reference pattern's weights; Longformer's global rows from its own projections."""
    weights = softmax_under(q, k, allowed)
    if global_qkv is None:
        return weights
    real = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool) if mask is None else mask
    rows = softmax_under(global_qkv[0], global_qkv[1], real[:, None, None, :].expand_as(allowed))
    return torch.where(global_rows[:, None, :, None], rows, weights)


def assert_weights_match(mechanism, reference, extra_global, causal, padding, user_global=None):
    length = 37
    lengths = LENGTHS if padding else [length] * 3
    q, k, v = qkv()
    mask = padding_mask(lengths, length, padding) if padding else None
    extra, global_qkv = hidden_inputs(mechanism, 3, length)
    if user_global is not None:
        extra["global_attention_mask"] = user_global
    plain = mechanism(q, k, v, padding_mask=mask, causal=causal, **extra)
    context, weights = mechanism(q, k, v, padding_mask=mask, causal=causal, output_attentions=True, **extra)

    allowed, global_rows = reference_allowed(
        reference, lengths, length, padding, causal, special=user_global is None,
        user_global=None if user_global is None else user_global.bool(), extra_global=extra_global,
    )
    assert weights.is_sparse and weights.is_coalesced() and weights.shape == (3, HEADS, length, length)
    stored = torch.zeros_like(allowed)
    stored[tuple(weights.indices())] = True
    assert torch.equal(stored, allowed)  # exactly the attended pairs, none for padded queries
    expected = reference_weights(q, k, allowed, global_rows, global_qkv, mask)
    torch.testing.assert_close(weights.to_dense().double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context, plain, atol=0, rtol=0)


@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_weights_equal_the_reference_softmax_on_exactly_the_pattern(name, causal, padding):
    if causal and name not in CAUSAL_CASES:
        pytest.skip("bidirectional only")
    assert_weights_match(*build(name), causal, padding)


@pytest.mark.parametrize("name", ["longformer", "bigbird", "strided-merged", "axial-merged"])
def test_weights_with_user_global_tokens(name):
    mechanism, reference, extra_global = build(name, global_special_tokens=False)
    user_global = torch.zeros(3, 37, dtype=torch.long)
    user_global[:, [3, 20, 30]] = 1
    assert_weights_match(mechanism, reference, extra_global, False, "left", user_global)


@pytest.mark.parametrize("dense", [False, True], ids=["blocks", "dense"])
def test_weights_are_the_same_on_the_dense_path_and_in_pieces(dense, monkeypatch):
    """The weights do not depend on the path the context takes, nor on how the engine chunks."""
    from effzoo.attention.ops import attention_weights, chunking

    mechanism, reference, extra_global = build("axial-merged", dense_attention_below=10**6 if dense else 0)
    monkeypatch.setattr(attention_weights, "chunk_plan",
                        lambda q, parts, batch: (chunking.chunk_slices(q.shape[0], q.shape[1], 1), 1))
    assert_weights_match(mechanism, reference, extra_global, True, "left")


def test_training_returns_the_weights_before_dropout():
    mechanism, _, _ = build("bigbird", attention_probs_dropout_prob=0.5)
    mechanism.train()
    q, k, v = qkv()
    _, weights = mechanism(q, k, v, padding_mask=padding_mask(LENGTHS, 37, "right"), output_attentions=True)
    sums = weights.to_dense().sum(-1)[0]  # the first sequence is all real
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_weights_while_decoding_raise():
    mechanism, _, _ = build("local")
    cache = type(mechanism).new_cache(mechanism_config := effzoo.LocalConfig(**TINY))
    assert mechanism_config.num_hidden_layers == TINY["num_hidden_layers"]
    with pytest.raises(ValueError, match="output_attentions is not available while decoding with LocalAttention"):
        mechanism(*qkv(), causal=True, cache=cache, output_attentions=True)


@pytest.mark.parametrize("name", SPARSE_VARIANTS)
def test_models_return_one_sparse_tensor_per_layer(name):
    variant = VARIANTS[name]
    model = variant.model_classes["AutoModel"](variant.config_class(**TINY)).eval()
    input_ids = torch.randint(5, TINY["vocab_size"], (2, 40))
    mask = torch.ones_like(input_ids)
    mask[1, 29:] = 0
    with torch.no_grad():
        plain = model(input_ids, attention_mask=mask).last_hidden_state
        output = model(input_ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(output.last_hidden_state, plain, atol=1e-6, rtol=1e-6)
    assert len(output.attentions) == TINY["num_hidden_layers"]
    for weights in output.attentions:
        assert weights.is_sparse and weights.shape == (2, TINY["num_attention_heads"], 40, 40)
        sums = weights.to_dense().sum(-1).transpose(1, 2)  # (batch, L, heads)
        torch.testing.assert_close(sums[mask.bool()], torch.ones_like(sums[mask.bool()]))
        assert (sums[~mask.bool()] == 0).all()
