"""``block_sparse_attention_weights`` (chunked, on gathered blocks) equals one dense softmax under
the same layout's L×L pattern: the same attended pairs, the same weights and gradients."""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.ops import chunking
from effzoo.attention.ops.attention_weights import block_sparse_attention_weights, naive_block_sparse_attention_weights

from .test_ops_block_attention import GLOBALS, HEADS, LAYOUTS, LENGTH, LENGTHS, global_tokens, inputs, layout

SHAPE = (len(LENGTHS), HEADS, LENGTH, LENGTH)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is much faster than two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_sparse(indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, SHAPE, check_invariants=True).coalesce()


def assert_same_entries_and_gradients(fast, naive, tensors):
    fast, naive = as_sparse(*fast), as_sparse(*naive)
    assert torch.equal(fast.indices(), naive.indices())
    torch.testing.assert_close(fast.values(), naive.values(), rtol=1e-10, atol=1e-10)
    generator = torch.Generator().manual_seed(2)
    weights = torch.randn(naive.values().shape, generator=generator, dtype=naive.dtype).to(naive.device)
    gradients = torch.autograd.grad((fast.values() * weights).sum(), tensors)
    naive_gradients = torch.autograd.grad((naive.values() * weights).sum(), tensors)
    for gradient, naive_gradient in zip(gradients, naive_gradients, strict=True):
        torch.testing.assert_close(gradient, naive_gradient, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks", ["one-chunk", "smallest-chunks"])
@GLOBALS
@pytest.mark.parametrize("name", LAYOUTS)
def test_weights_equal_naive(name, causal, globals_, chunks, device, monkeypatch):
    if chunks == "smallest-chunks":
        monkeypatch.setattr(chunking, "CHUNK_BYTES", 1)
    groups = layout(name, causal, device)
    tokens = global_tokens(globals_, causal, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, _ = inputs(device)
    fast = block_sparse_attention_weights(q, k, groups, lengths=lengths, global_tokens=tokens, causal=causal)
    naive = naive_block_sparse_attention_weights(q, k, groups, lengths=lengths, global_tokens=tokens, causal=causal)
    assert_same_entries_and_gradients(fast, naive, (q, k))


def test_weights_rows_sum_to_one_for_real_queries_and_padded_ones_have_none(device):
    groups = layout("mixed-head-groups", False, device)
    tokens = global_tokens("special-and-user", False, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, _ = inputs(device)
    sums = as_sparse(*block_sparse_attention_weights(q, k, groups, lengths=lengths, global_tokens=tokens))
    sums = sums.to_dense().sum(-1)
    real = torch.arange(LENGTH, device=device) < lengths[:, None]
    torch.testing.assert_close(sums, real[:, None].expand_as(sums).double())


@pytest.mark.parametrize("name", ["window", "rows-and-columns"])
def test_given_global_weights_replace_the_global_rows(name, device):
    """A mechanism with its own global projections (Longformer) gives the global rows' weights."""
    groups = layout(name, False, device)
    tokens = global_tokens("special-and-user", False, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, _ = inputs(device)
    scores = torch.randn(len(LENGTHS), HEADS, tokens.positions.shape[1], LENGTH, dtype=torch.float64, device=device)
    global_weights = scores.softmax(-1).requires_grad_()
    fast = block_sparse_attention_weights(q, k, groups, lengths=lengths, global_tokens=tokens,
                                          global_weights=global_weights)
    naive = naive_block_sparse_attention_weights(q, k, groups, lengths=lengths, global_tokens=tokens,
                                                 global_weights=global_weights)
    assert_same_entries_and_gradients(fast, naive, (q, k, global_weights))
