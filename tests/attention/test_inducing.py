"""Induced set attention against its two attentions written out by hand in float64.

The reference loops over sequences and heads in Python: the latents' softmax over the real tokens
that are not special, the pooled keys A K and values A V, the special tokens' exact keys and values
appended, and each real query's softmax over those. It has no exact limit (m latents never equal
attention over L tokens), so this written-out math is what the mechanism must return.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from effzoo.attention.inducing import InducingAttention
from effzoo.configs.inducing import InducingConfig
from effzoo.conversion.calibration import calibrate
from effzoo.modeling.inducing import InducingForMaskedLM, InducingModel
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)
LENGTH = 19


def mechanism(**fields) -> InducingAttention:
    return InducingAttention(InducingConfig(**{**TINY, "num_inducing_points": 4, **fields})).eval()


def qkv(batch: int = 3, length: int = LENGTH, heads: int = 2, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(4)
    return [torch.randn(batch, heads, length, 8, generator=generator, dtype=dtype) for _ in range(3)]


def padding_mask(batch: int, length: int, padding: str | None) -> torch.Tensor | None:
    """Rows of length, length − 5, … real tokens, and a last row of two (both special: nothing to pool)."""
    if padding is None:
        return None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        real = 2 if row == batch - 1 else length - 5 * row
        mask[row] = torch.arange(length) < real if padding == "right" else torch.arange(length) >= length - real
    return mask


def reference(attention: InducingAttention, q, k, v, mask) -> torch.Tensor:
    """ISAB as the module docstring writes it, per sequence and head, in float64."""
    batch, heads, length, dim = q.shape
    q, k, v, latents = q.double(), k.double(), v.double(), attention.latents.double()
    out = torch.zeros(batch, heads, length, dim, dtype=torch.float64)
    for b in range(batch):
        real = [p for p in range(length) if mask is None or mask[b, p]]
        special = sorted({real[0], real[-1]}) if attention.global_special_tokens and real else []
        pooled = [p for p in real if p not in special]
        for h in range(heads):
            keys, values = [], []
            if pooled:
                weights = torch.softmax(latents[h] @ k[b, h, pooled].T / math.sqrt(dim), dim=-1)  # (m, pooled)
                keys.append(weights @ k[b, h, pooled])
                values.append(weights @ v[b, h, pooled])
            keys.append(k[b, h, special])
            values.append(v[b, h, special])
            keys, values = torch.cat(keys), torch.cat(values)
            for i in real:
                out[b, h, i] = torch.softmax(keys @ q[b, h, i] / math.sqrt(dim), dim=-1) @ values
    return out


@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("global_special_tokens", [True, False])
@pytest.mark.parametrize("points", [1, 4, 25])
def test_inducing_equals_its_two_attentions_written_out(padding, global_special_tokens, points, device):
    attention = mechanism(num_inducing_points=points, global_special_tokens=global_special_tokens).to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(3, LENGTH, padding)
    out = attention(q, k, v, padding_mask=None if mask is None else mask.to(device))
    expected = reference(attention.cpu(), q.cpu(), k.cpu(), v.cpu(), mask)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=1e-5)


def test_gradients_equal_the_reference_latents_included():
    attention = mechanism().double()
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(3, LENGTH, "left")
    inputs = (q, k, v, attention.latents)
    got = torch.autograd.grad(attention(q, k, v, padding_mask=mask).square().sum(), inputs)
    want = torch.autograd.grad(reference(attention, q, k, v, mask).square().sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


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
    """With a fixed number of latents the largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32, num_inducing_points=16).train()
    assert_memory_grows_linearly(attention, heads=4)


def test_calibration_puts_the_latents_at_the_centres_of_the_real_queries():
    """Queries drawn around four directions: the latents land on them; padded and special tokens,
    set far away, change nothing (the same latents as calibrating on the pooled queries alone)."""
    attention = mechanism(num_attention_heads=1, hidden_size=8)
    generator = torch.Generator().manual_seed(1)
    directions = 3 * F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    labels = torch.arange(2 * LENGTH) % 4
    q = (directions[labels] + 0.05 * torch.randn(2 * LENGTH, 8, generator=generator)).view(2, 1, LENGTH, 8)
    mask = torch.ones(2, LENGTH, dtype=torch.bool)
    mask[1, 15:] = False
    special = torch.zeros_like(mask)
    special[:, 0] = special[0, -1] = special[1, 14] = True
    far = q.masked_fill((~mask | special)[:, None, :, None], 1e3)
    start = attention.latents.detach().clone()
    attention.calibrate_on(far, torch.randn_like(q), mask)
    assert torch.isfinite(attention.latents).all()
    distance = torch.cdist(attention.latents[0], directions)
    assert bool((distance.min(dim=0).values < 0.1).all()), distance
    alone = mechanism(num_attention_heads=1, hidden_size=8, global_special_tokens=False)
    alone.latents.data.copy_(start)
    pooled = q.transpose(0, 1)[:, mask & ~special][:, None]  # (1 head, 1 row, pooled, d)
    alone.calibrate_on(pooled.transpose(0, 1), pooled.transpose(0, 1))
    torch.testing.assert_close(attention.latents, alone.latents, atol=0, rtol=0)


def test_calibration_with_fewer_tokens_than_latents_keeps_the_others():
    attention = mechanism(num_inducing_points=6, global_special_tokens=False)
    before = attention.latents.detach().clone()
    q, k, _ = qkv(batch=1, length=3)
    attention.calibrate_on(q, k)
    assert torch.equal(attention.latents[:, 3:], before[:, 3:])
    assert not torch.equal(attention.latents[:, :3], before[:, :3])


def test_calibrating_a_model_sets_every_layer_and_save_load_gives_identical_outputs(tmp_path):
    config = InducingConfig(**{**TINY, "vocab_size": 99, "num_hidden_layers": 2}, num_inducing_points=3)
    torch.manual_seed(0)
    model = InducingForMaskedLM(config).eval()
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 12:] = 0
    drawn = [layer.attention.self.mechanism.latents.detach().clone() for layer in model.bert.encoder.layer]
    calibrate(model, {"input_ids": input_ids, "attention_mask": mask})
    for layer, start in zip(model.bert.encoder.layer, drawn):
        latents = layer.attention.self.mechanism.latents
        assert torch.isfinite(latents).all() and not torch.equal(latents, start)
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = InducingForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


def test_latents_are_drawn_again_after_meta_device_init():
    config = InducingConfig(**{**TINY, "vocab_size": 99}, num_inducing_points=3)
    with torch.device("meta"):
        model = InducingModel(config)
    model.to_empty(device="cpu")
    latents = model.encoder.layer[0].attention.self.mechanism.latents
    with torch.no_grad():
        latents.fill_(float("nan"))
    model.init_weights()
    assert torch.isfinite(latents).all() and 0.5 < float(latents.detach().std()) < 1.5


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8", None])
def test_inducing_points_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"num_inducing_points must be a positive integer.*num_inducing_points=64"):
        InducingConfig(**TINY, num_inducing_points=value)


def test_a_causal_request_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"causal=True.*Call with causal=False"):
        mechanism()(*qkv(), causal=True)
    with pytest.raises(ValueError, match=r"is_decoder=True.*Set is_decoder=False"):
        InducingConfig(**TINY, is_decoder=True)
    assert not InducingAttention.supports_causal
