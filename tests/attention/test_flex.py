"""The compiled flex-attention inference path equals the block-gather path it replaces.

Compiling flex attention takes seconds per pattern on CPU, so these tests share one length and
few patterns; each checks that flex really ran (a fallback would make the comparison vacuous).
"""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.local import LocalAttention
from effzoo.attention.ops import block_attention
from effzoo.attention.random_blocks import RandomBlocksAttention
from effzoo.attention.sliding_window import SlidingWindowAttention
from effzoo.attention.strided import StridedAttention

from .test_sparse_patterns import CONFIG_CLASSES

HEADS, HEAD_DIM, LENGTH = 2, 16, 128


def _config(mechanism_class, **fields):
    base = dict(attention_probs_dropout_prob=0.0, num_hidden_layers=1, num_attention_heads=HEADS,
                hidden_size=HEADS * HEAD_DIM, max_position_embeddings=LENGTH, dense_attention_below=0)
    return CONFIG_CLASSES[mechanism_class](**{**base, **fields})


@pytest.fixture
def flex_calls(monkeypatch):
    """Records whether each flex call ran (True) or fell back to the block path (False)."""
    calls = []

    def recording(*args, **kwargs):
        context = original(*args, **kwargs)
        calls.append(context is not None)
        return context

    original = block_attention.attend_group_flex
    monkeypatch.setattr(block_attention, "attend_group_flex", recording)
    return calls


CASES = {
    "local": (LocalAttention, {"block_size": 32, "num_blocks_before": 1, "num_blocks_after": 1}),
    "longformer": (SlidingWindowAttention, {"attention_window": 32}),
    "bigbird": (RandomBlocksAttention, {"block_size": 16, "num_random_blocks": 2}),
}


def _inputs():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, LENGTH, HEAD_DIM, generator=generator) * 2 for _ in range(3))
    mask = torch.ones(2, LENGTH, dtype=torch.bool)
    mask[1, :37] = False  # left padding: the packed batch has a short row
    global_attention_mask = torch.zeros(2, LENGTH, dtype=torch.long)
    global_attention_mask[:, 70] = 1
    return q, k, v, mask, global_attention_mask


def _pair(mechanism_class, fields):
    flex = mechanism_class(_config(mechanism_class, **fields, flex_attention_from=0)).eval()
    blocks = mechanism_class(_config(mechanism_class, **fields, flex_attention_from=None)).eval()
    blocks.load_state_dict(flex.state_dict())
    return flex, blocks


@pytest.mark.parametrize("name", sorted(CASES))
def test_flex_equals_the_block_path_with_padding_and_global_tokens(name, flex_calls):
    flex, blocks = _pair(*CASES[name])
    q, k, v, mask, global_attention_mask = _inputs()
    extra = {"hidden_states": torch.randn(2, LENGTH, HEADS * HEAD_DIM)} if name == "longformer" else {}
    with torch.no_grad():
        expected = blocks(q, k, v, padding_mask=mask, global_attention_mask=global_attention_mask, **extra)
        assert flex_calls == []
        out = flex(q, k, v, padding_mask=mask, global_attention_mask=global_attention_mask, **extra)
    assert flex_calls and all(flex_calls)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["local", "longformer"])
def test_flex_equals_the_block_path_causal(name, flex_calls):
    flex, blocks = _pair(*CASES[name])
    q, k, v, mask, _ = _inputs()
    with torch.no_grad():
        out = flex(q, k, v, padding_mask=mask, causal=True)
        expected = blocks(q, k, v, padding_mask=mask, causal=True)
    assert flex_calls == [True]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_training_and_permuted_layouts_keep_the_block_path(flex_calls):
    flex, _ = _pair(*CASES["local"])
    q, k, v, mask, _ = _inputs()
    q.requires_grad_(True)
    flex(q, k, v, padding_mask=mask).sum().backward()  # a gradient is needed: no flex
    strided = StridedAttention(_config(StridedAttention, sparse_pattern="strided", stride=16, flex_attention_from=0)).eval()
    with torch.no_grad():
        strided(q, k, v, padding_mask=mask)  # residue-ordered parts: not a flex layout
    assert flex_calls == [] and q.grad is not None


def test_flex_attention_from_is_checked():
    with pytest.raises(ValueError, match="flex_attention_from"):
        LocalAttention(_config(LocalAttention, flex_attention_from=-1))
