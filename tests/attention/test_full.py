"""The exact mechanism against the dense reference, in every mode the backbone uses."""

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from effzoo.attention import FullAttention, dense_reference_attention, padding_and_causal_pattern

CONFIG = SimpleNamespace(attention_probs_dropout_prob=0.0, num_hidden_layers=1)


def qkv(batch=3, heads=2, length=10, dim=8):
    return [torch.randn(batch, heads, length, dim) for _ in range(3)]


def masks(length=10):
    right = torch.tensor([[1] * length, [1] * 6 + [0] * (length - 6), [1] * 2 + [0] * (length - 2)]).bool()
    left = right.flip(-1)
    middle = torch.ones(3, length, dtype=torch.bool)
    middle[1, 3:5] = False
    middle[2, :] = False  # a sequence with no real token at all
    return {"right": right, "left": left, "middle": middle}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left", "middle"])
def test_full_equals_dense_reference(causal, padding):
    q, k, v = qkv()
    padding_mask = None if padding is None else masks()[padding]
    out = FullAttention(CONFIG).eval()(q, k, v, padding_mask=padding_mask, causal=causal)
    allowed = padding_and_causal_pattern(padding_mask, 10, 10, causal)
    expected = dense_reference_attention(q, k, v, allowed)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_padded_queries_and_empty_rows_are_zero_with_finite_gradients():
    q, k, v = [t.requires_grad_() for t in qkv()]
    padding_mask = masks()["middle"]
    out = FullAttention(CONFIG).train()(q, k, v, padding_mask=padding_mask, causal=False)
    assert (out[2] == 0).all() and (out[1, :, 3:5] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("padding", [None, "left"])
def test_decoding_with_cache_equals_causal_forward(padding):
    q, k, v = qkv(length=9)
    padding_mask = None if padding is None else masks(9)[padding][:2]
    q, k, v = q[:2], k[:2], v[:2]
    attention = FullAttention(CONFIG, layer_idx=0).eval()
    expected = attention(q, k, v, padding_mask=padding_mask, causal=True)

    cache = DynamicCache()
    steps = [(0, 4), (4, 6), (6, 7), (7, 8), (8, 9)]  # a prefill, a two-token chunk, then one token at a time
    outputs = []
    for start, end in steps:
        mask = None if padding_mask is None else padding_mask[:, :end]
        outputs.append(attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                 padding_mask=mask, causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    q, k, v = qkv()
    attention = FullAttention(SimpleNamespace(attention_probs_dropout_prob=0.5))
    eval_out = attention.eval()(q, k, v)
    torch.testing.assert_close(attention.eval()(q, k, v), eval_out)
    assert not torch.allclose(attention.train()(q, k, v), eval_out)



def test_attention_dropout_on_cpu_warns_once_in_training_only():
    """SDPA has no fused CPU kernel with dropout: the memory cost is announced, once; eval is silent."""
    import logging

    from effzoo.attention.base import logger

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.Logger.warning_once.cache_clear()
    logger.addHandler(handler)
    mechanism = FullAttention(SimpleNamespace(attention_probs_dropout_prob=0.1, num_hidden_layers=1))
    q, k, v = qkv()
    try:
        mechanism.eval()(q, k, v)
        assert records == []
        mechanism.train()(q, k, v)
        mechanism.train()(q, k, v)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "attention_probs_dropout_prob=0.1" in message and "attention_probs_dropout_prob=0" in message
