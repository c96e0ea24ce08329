"""``gather_keys`` (one buffer, shifted or indexed blocks, a custom backward) equals the keys read
position by position, forward and backward."""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.ops.key_gather import gather_keys, naive_gather_keys
from effzoo.attention.ops.layout import KeyBlocks, residue_order

HEADS, BATCH, LENGTH, DIM, SIZE = 3, 2, 24, 5, 4
NUM_BLOCKS = LENGTH // SIZE


def random_index(generator: torch.Generator, heads: int, batch: int, per_block: int) -> torch.Tensor:
    """(heads, batch, blocks, per_block) distinct key blocks per query block, some entries -1 (none)."""
    scores = torch.rand(heads, batch, NUM_BLOCKS, NUM_BLOCKS, generator=generator)
    index = scores.argsort(-1)[..., :per_block]
    missing = torch.rand(index.shape, generator=generator) < 0.25
    return index.masked_fill(missing, -1)


def sources(name: str) -> tuple[KeyBlocks, ...]:
    generator = torch.Generator().manual_seed(3)
    order = residue_order(LENGTH, 3, torch.device("cpu"))
    if name == "own-block":  # the one-source shortcut: the blocks themselves
        return (KeyBlocks.neighbours(NUM_BLOCKS, 0, 0, SIZE),)
    if name == "neighbours":
        return (KeyBlocks.neighbours(NUM_BLOCKS, 2, 1, SIZE),)
    if name == "neighbours-in-residue-order":
        return (KeyBlocks.neighbours(NUM_BLOCKS, 1, 1, SIZE, order=order),)
    if name == "index-per-head-and-row":
        return (KeyBlocks(random_index(generator, HEADS, BATCH, 2), SIZE),)
    if name == "index-shared-in-residue-order":
        return (KeyBlocks(random_index(generator, 1, 1, 3), SIZE, order),)
    if name == "three-sources":
        return (
            KeyBlocks.neighbours(NUM_BLOCKS, 1, 0, SIZE),
            KeyBlocks(random_index(generator, HEADS, 1, 2), SIZE),
            KeyBlocks(random_index(generator, 1, BATCH, 1), SIZE, residue_order(LENGTH, 2, torch.device("cpu"))),
        )
    raise KeyError(name)


NAMES = ["own-block", "neighbours", "neighbours-in-residue-order", "index-per-head-and-row",
         "index-shared-in-residue-order", "three-sources"]


def existing_keys(layout: tuple[KeyBlocks, ...], tail: torch.Tensor | None) -> torch.Tensor:
    """(heads, batch, blocks, keys, 1) bool: the gathered keys that exist (a missing block's are
    dropped by the masks, whatever their values)."""
    exists = [(source.positions() >= 0).expand(HEADS, BATCH, NUM_BLOCKS, -1) for source in layout]
    if tail is not None:
        exists.append(torch.ones(HEADS, BATCH, NUM_BLOCKS, tail.shape[2], dtype=torch.bool))
    return torch.cat(exists, dim=-1)[..., None]


@pytest.mark.parametrize("with_tail", [False, True], ids=["no-tail", "tail"])
@pytest.mark.parametrize("name", NAMES)
def test_gather_keys_equals_naive(name, with_tail):
    layout = sources(name)
    x = torch.randn(HEADS, BATCH, LENGTH, DIM, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(HEADS, BATCH, 3, DIM, dtype=torch.float64, requires_grad=True) if with_tail else None
    out, expected = gather_keys(x, layout, tail), naive_gather_keys(x, layout, tail)
    assert out.shape == expected.shape
    exists = existing_keys(layout, tail)
    torch.testing.assert_close(out * exists, expected, rtol=0, atol=0)
    weights = torch.randn(expected.shape, dtype=torch.float64) * exists
    inputs = (x,) if tail is None else (x, tail)
    gradients = torch.autograd.grad((out * weights).sum(), inputs)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), inputs)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-12)


def test_gathering_some_query_blocks_equals_their_slice_of_all():
    layout = sources("three-sources")
    x = torch.randn(HEADS, BATCH, LENGTH, DIM, dtype=torch.float64)
    blocks = slice(2, 5)
    part = gather_keys(x, tuple(source.for_query_blocks(blocks) for source in layout))
    exists = existing_keys(layout, None)[:, :, blocks]
    torch.testing.assert_close(part * exists, naive_gather_keys(x, layout)[:, :, blocks], rtol=0, atol=0)
