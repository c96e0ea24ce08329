"""The decoding cache layers of the sparse patterns against Transformers' ``DynamicLayer``."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from effzoo.attention.kv_cache import GrowingKeyValueLayer


def states(length: int, seed: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 2, length, 4, generator=generator) for _ in range(2))


def fill(layers, chunks, batch: int = 3):
    for seed, length in enumerate(chunks):
        outputs = [layer.update(*states(length, seed, batch)) for layer in layers]
    return outputs


def test_appends_equal_concatenation_without_reallocating():
    growing, dynamic = GrowingKeyValueLayer(), DynamicLayer()
    chunks = [5] + [1] * 300  # a prefill, then one token at a time past the first buffer's 256 rows
    pointers = set()
    for seed, length in enumerate(chunks):
        got, want = growing.update(*states(length, seed)), dynamic.update(*states(length, seed))
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        pointers.add(growing.keys.data_ptr())
    assert growing.get_seq_length() == dynamic.get_seq_length() == 305
    assert len(pointers) == 2  # 5 + 256 rows, then 262 + 256: one reallocation in 301 appends


def test_crop_beam_reorder_and_batch_selection_keep_it_exact():
    growing, dynamic = GrowingKeyValueLayer(), DynamicLayer()
    fill((growing, dynamic), [6, 1, 1])
    for layer in (growing, dynamic):
        layer.crop(-3)  # then overwrite the cropped rows
    fill((growing, dynamic), [2])
    for layer in (growing, dynamic):
        layer.batch_select_indices(torch.tensor([2, 0]))  # replaces the views: the next append reallocates
    fill((growing, dynamic), [1], batch=2)
    for layer in (growing, dynamic):
        layer.batch_repeat_interleave(2)
    got, want = fill((growing, dynamic), [1, 3], batch=4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].shape == (4, 2, 12, 4)  # 8 − 3 + 2 + 1 + 1 + 3 tokens


def test_appends_under_autograd_concatenate_so_saved_tensors_stay_valid():
    layer = GrowingKeyValueLayer()
    keys, values = (x.requires_grad_() for x in states(4, 0))
    cached_keys, _ = layer.update(keys, values)
    loss = cached_keys.square().sum()  # saves cached_keys for the backward
    layer.update(*(x.requires_grad_() for x in states(1, 1)))  # must not write into what the graph saved
    loss.backward()
    assert torch.equal(keys.grad, 2 * keys)
    assert layer.get_seq_length() == 5


def test_reset_forgets_the_buffer():
    layer = GrowingKeyValueLayer()
    fill([layer], [4])
    layer.reset()
    keys, _ = layer.update(*states(2, 7))
    assert torch.equal(keys, states(2, 7)[0]) and layer.get_seq_length() == 2
