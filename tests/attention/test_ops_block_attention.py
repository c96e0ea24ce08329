"""The block-sparse engine equals dense softmax attention under the same layout's L×L pattern.

Each path of ``block_sparse_attention`` (the fused chunked CPU kernel, also cut into the smallest
chunks and pieces; one SDPA per part with a merged softmax, the GPU and dropout path; the dense
crossover) is compared with ``naive_block_sparse_attention`` on hand-made layouts: exact and
trimmed windows, per-head random blocks beside the own block, a dilated window in residue order,
a row and column union in two position orders, and head groups with different layouts; with
padding, an empty row, global tokens (special and user-given, or none) and causality.
"""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.ops import block_attention, chunking
from effzoo.attention.ops.block_attention import block_sparse_attention, naive_block_sparse_attention
from effzoo.attention.ops.global_tokens import GlobalTokens, global_token_mask
from effzoo.attention.ops.layout import HeadGroup, KeyBlocks, Part, residue_order

HEADS, HEAD_DIM, LENGTH, BLOCK = 3, 8, 24, 4
NUM_BLOCKS = LENGTH // BLOCK
COLUMNS = 6  # the grid of the row-and-column layout: 4 rows of 6
LENGTHS = [24, 13, 0]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is much faster than two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_other_blocks(device: torch.device) -> torch.Tensor:
    """(heads, batch, blocks, 2): two distinct key blocks per head, row and query block, never its
    own (that is the other source), the second missing (-1) for some."""
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(HEADS, len(LENGTHS), NUM_BLOCKS, NUM_BLOCKS, generator=generator)
    scores[..., torch.arange(NUM_BLOCKS), torch.arange(NUM_BLOCKS)] = 2.0  # own block sorts last
    index = scores.argsort(-1)[..., :2]
    index[..., 1] = index[..., 1].masked_fill(torch.rand(index[..., 1].shape, generator=generator) < 0.3, -1)
    return index.to(device)


def _parts(name: str, causal: bool, device: torch.device) -> tuple[Part, ...]:
    after = 0 if causal else 1
    if name == "window":
        return (Part(BLOCK, (KeyBlocks.neighbours(NUM_BLOCKS, 1, after, BLOCK, device=device, exact=True),)),)
    if name == "trimmed-window":
        within = lambda i, j: (i - j).abs() <= 5  # noqa: E731
        return (Part(BLOCK, (KeyBlocks.neighbours(NUM_BLOCKS, 2, after, BLOCK, allowed=within, device=device),)),)
    if name == "own-and-random-blocks":
        own = KeyBlocks.neighbours(NUM_BLOCKS, 0, 0, BLOCK, device=device, exact=True)
        return (Part(BLOCK, (own, KeyBlocks(_random_other_blocks(device), BLOCK))),)
    if name == "dilated-window":
        order = residue_order(LENGTH, 2, device)
        dilated = lambda i, j: ((i - j) % 2 == 0) & ((i - j).abs() <= 6)  # noqa: E731
        return (Part(BLOCK, (KeyBlocks.neighbours(NUM_BLOCKS, 1, 1, BLOCK, order, dilated, device),), order),)
    if name == "rows-and-columns":
        order = residue_order(LENGTH, COLUMNS, device)
        rows = LENGTH // COLUMNS
        same_column = lambda i, j: i % COLUMNS == j % COLUMNS  # noqa: E731
        other_cell = lambda i, j: i != j  # noqa: E731
        row = KeyBlocks.neighbours(rows, 0, 0, COLUMNS, allowed=other_cell, device=device)
        column = KeyBlocks.neighbours(COLUMNS, 0, 0, rows, order, same_column, device, exact=True)
        return Part(COLUMNS, (row,)), Part(rows, (column,), order)
    raise KeyError(name)


def layout(name: str, causal: bool, device: torch.device) -> list[HeadGroup]:
    if name == "mixed-head-groups":
        return [
            HeadGroup(slice(0, 1), _parts("dilated-window", causal, device)),
            HeadGroup(slice(1, HEADS), _parts("rows-and-columns", causal, device)),
        ]
    return [HeadGroup(slice(0, HEADS), _parts(name, causal, device))]


LAYOUTS = ["window", "trimmed-window", "own-and-random-blocks", "dilated-window", "rows-and-columns",
           "mixed-head-groups"]


def global_tokens(kind: str, causal: bool, device: torch.device) -> GlobalTokens | None:
    """None, the special tokens (the first real one only, when causal), or those and user tokens
    (bidirectional only: a global token would see the future)."""
    if kind == "none":
        return None
    lengths = torch.tensor(LENGTHS, device=device)
    user = torch.zeros(len(LENGTHS), LENGTH, dtype=torch.bool, device=device)
    if kind == "special-and-user":
        user[:, [7, 18]] = True
    return GlobalTokens.from_mask(global_token_mask(lengths, LENGTH, causal=causal, special_tokens=True, extra=(user,)))


def inputs(device: torch.device, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(len(LENGTHS), HEADS, LENGTH, HEAD_DIM, generator=generator, dtype=dtype).to(device).requires_grad_()
        for _ in range(3)
    ]


def assert_same_output_and_gradients(fast, naive, tensors, atol=1e-10):
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(naive.shape, generator=generator, dtype=naive.dtype).to(naive.device)
    torch.testing.assert_close(fast, naive, rtol=atol, atol=atol)
    gradients = torch.autograd.grad((fast * weights).sum(), tensors)
    naive_gradients = torch.autograd.grad((naive * weights).sum(), tensors)
    for gradient, naive_gradient in zip(gradients, naive_gradients, strict=True):
        torch.testing.assert_close(gradient, naive_gradient, rtol=atol, atol=atol)


PATHS = ["blocks", "blocks-in-smallest-chunks", "sdpa-per-part", "dense"]

#: (causal, global tokens) cases: user global tokens are bidirectional only.
GLOBALS = pytest.mark.parametrize(
    "causal, globals_",
    [(False, "none"), (False, "special"), (False, "special-and-user"), (True, "none"), (True, "special")],
    ids=["bidirectional-none", "bidirectional-special", "bidirectional-special-and-user", "causal-none",
         "causal-special"],
)


@GLOBALS
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", LAYOUTS)
def test_block_sparse_attention_equals_naive(name, path, causal, globals_, device, monkeypatch):
    if path == "blocks-in-smallest-chunks":  # one (head, row) pair per chunk, one query block per piece
        monkeypatch.setattr(chunking, "CHUNK_BYTES", 1)
    if path == "sdpa-per-part":  # the path off CPU and with dropout, here without dropout
        monkeypatch.setattr(block_attention, "_attend_group_blocks", block_attention._attend_group_sdpa)
    groups = layout(name, causal, device)
    tokens = global_tokens(globals_, causal, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, v = inputs(device)
    fast = block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens, causal=causal,
                                  dense=path == "dense")
    naive = naive_block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens, causal=causal)
    assert_same_output_and_gradients(fast, naive, (q, k, v))


@pytest.mark.parametrize("name", ["window", "rows-and-columns"])
def test_given_global_context_replaces_the_global_rows(name, device):
    """A mechanism with its own global projections (Longformer) gives the global rows' context."""
    groups = layout(name, False, device)
    tokens = global_tokens("special-and-user", False, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, v = inputs(device)
    global_context = torch.randn(len(LENGTHS), HEADS, tokens.positions.shape[1], HEAD_DIM, dtype=torch.float64,
                                 device=device, requires_grad=True)
    fast = block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens, global_context=global_context)
    naive = naive_block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens,
                                         global_context=global_context)
    assert_same_output_and_gradients(fast, naive, (q, k, v, global_context))


@pytest.mark.parametrize("name", ["own-and-random-blocks", "rows-and-columns"])
def test_float32_equals_naive_to_1e_5(name, device):
    groups = layout(name, False, device)
    tokens = global_tokens("special-and-user", False, device)
    lengths = torch.tensor(LENGTHS, device=device)
    q, k, v = inputs(device, torch.float32)
    fast = block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens)
    naive = naive_block_sparse_attention(q, k, v, groups, lengths=lengths, global_tokens=tokens)
    assert_same_output_and_gradients(fast, naive, (q, k, v), atol=1e-5)
