"""Linformer against exact softmax attention over keys and values projected as the definition says.

The reference works row by row in Python: it lists the row's real tokens that are not special, lets
the token of rank r among n of them read column ⌊(2r + 1) · N / (2n)⌋ of each projection row, rescales
the row by Σ_c |E_ic| / Σ_r |E_i c(r)|, forms the projected keys and values, appends the exact special
tokens and runs ``dense_reference_attention`` over them.
"""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.full import FullAttention
from effzoo.attention.linformer import LinformerAttention
from effzoo.attention.reference import dense_reference_attention
from effzoo.configs.linformer import LinformerConfig
from effzoo.modeling.linformer import LinformerForMaskedLM, LinformerModel
from tests.attention.inputs import LENGTH, padding_mask, qkv
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=32, attention_probs_dropout_prob=0.0)


def config(**fields) -> LinformerConfig:
    return LinformerConfig(**{**TINY, "projected_length": 8, **fields})


def mechanism(**fields) -> LinformerAttention:
    return LinformerAttention(config(**fields)).eval()


def randomise(attention: LinformerAttention, seed: int = 1) -> LinformerAttention:
    """Projections with entries of both signs, so that the rescaling and the column choice matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for projection in attention.projections():
            projection.copy_(torch.randn(projection.shape, generator=generator))
    return attention


def special_positions(real: list[int], special_tokens: bool) -> list[int]:
    return sorted({real[0], real[-1]}) if special_tokens and real else []


def project_row(matrix: torch.Tensor, x: torch.Tensor, tokens: list[int]) -> tuple[list[torch.Tensor], list[bool]]:
    """Rows of ``matrix`` (k, N) applied to ``x`` (L, d) at the listed tokens, from the definition."""
    positions, n = matrix.shape[-1], len(tokens)
    rows, filled = [], []
    for i in range(matrix.shape[0]):
        weights = torch.stack([matrix[i, (2 * r + 1) * positions // (2 * n)] for r in range(n)])
        received = weights.abs().sum()
        row = sum(w * x[p] for w, p in zip(weights, tokens))
        rows.append(row * matrix[i].abs().sum() / received if received > 0 else row)
        filled.append(bool(received > 0))
    return rows, filled


def reference(attention: LinformerAttention, q, k, v, mask) -> torch.Tensor:
    q_dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    batch, heads, length, _ = q.shape
    real = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask
    out = torch.zeros_like(q)
    value_projection = attention.key_projection if attention.value_projection is None else attention.value_projection
    for b in range(batch):
        positions = [p for p in range(length) if real[b, p]]
        special = special_positions(positions, attention.global_special_tokens)
        tokens = [p for p in positions if p not in special]
        for h in range(heads):
            key_matrix = attention.key_projection[h % attention.key_projection.shape[0]].double()
            value_matrix = value_projection[h % value_projection.shape[0]].double()
            keys, filled = project_row(key_matrix, k[b, h], tokens) if tokens else ([], [])
            values, _ = project_row(value_matrix, v[b, h], tokens) if tokens else ([], [])
            keys = [key for key, f in zip(keys, filled) if f] + [k[b, h, p] for p in special]
            values = [value for value, f in zip(values, filled) if f] + [v[b, h, p] for p in special]
            context = dense_reference_attention(q[b, h, positions][None, None], torch.stack(keys)[None, None],
                                                torch.stack(values)[None, None])
            out[b, h, positions] = context[0, 0]
    return out.to(q_dtype)


@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("special_tokens", [True, False])
def test_identity_projections_with_k_equal_to_the_length_equal_full_attention(padding, special_tokens, device):
    attention = mechanism(max_position_embeddings=LENGTH, projected_length=LENGTH, projection_sharing="none",
                          projection_init="gaussian", global_special_tokens=special_tokens)
    with torch.no_grad():
        for projection in attention.projections():
            projection.copy_(torch.eye(LENGTH).expand_as(projection))
    attention.to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(2, LENGTH, padding)
    mask = None if mask is None else mask.to(device)
    expected = FullAttention(config()).eval()(q, k, v, padding_mask=mask)
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("projected_length", [16, 32])
@pytest.mark.parametrize("padding", [None, "left"])
def test_pooling_with_k_at_least_the_tokens_equals_full_attention(projected_length, padding):
    """k divides N = 32 and k ≥ the tokens: every token is its own segment, the exact limit."""
    attention = mechanism(projected_length=projected_length)
    q, k, v = qkv(length=16 if projected_length == 16 else LENGTH)
    mask = padding_mask(2, q.shape[2], padding)
    expected = FullAttention(config()).eval()(q, k, v, padding_mask=mask)
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask), expected, atol=1e-5, rtol=1e-5)


def test_at_the_full_length_it_is_the_papers_formula():
    """n = N, no padding, no special tokens: softmax(Q (E K)ᵀ / √d) (F V), eq. 7, with E and F as they are."""
    attention = randomise(mechanism(max_position_embeddings=LENGTH, projection_sharing="none",
                                    global_special_tokens=False))
    q, k, v = qkv()
    keys = attention.key_projection[None] @ k
    values = attention.value_projection[None] @ v
    torch.testing.assert_close(attention(q, k, v), dense_reference_attention(q, keys, values), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sharing", ["none", "headwise", "key_value"])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("special_tokens", [True, False])
def test_equals_the_reference_written_from_the_definition(sharing, padding, special_tokens, device):
    """In float64: random projections of both signs make some rows' keys large and the softmax sharp."""
    attention = randomise(mechanism(projection_sharing=sharing, global_special_tokens=special_tokens))
    attention = attention.double().to(device)
    q, k, v = qkv(dtype=torch.float64)
    mask = padding_mask(2, LENGTH, padding)
    out = attention(q.to(device), k.to(device), v.to(device), padding_mask=None if mask is None else mask.to(device))
    torch.testing.assert_close(out.cpu(), reference(attention.cpu(), q, k, v, mask), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("padding", [None, "left"])
def test_pooling_averages_k_segments_of_the_actual_length(padding):
    """Pooling start, k = 8 dividing N = 32, n tokens: segment i holds the ranks r with ⌊(r + ½) · 8 / n⌋ = i,
    whatever n (here 17 and 12 tokens besides the special ones)."""
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, padding)
    real = torch.ones(2, LENGTH, dtype=torch.bool) if mask is None else mask
    out = attention(q, k, v, padding_mask=mask)
    for b in range(2):
        positions = [p for p in range(LENGTH) if real[b, p]]
        tokens = positions[1:-1]
        segment = torch.tensor([(2 * r + 1) * 8 // (2 * len(tokens)) for r in range(len(tokens))])
        assert sorted(set(segment.tolist())) == list(range(8))
        members = [torch.tensor(tokens)[segment == i] for i in range(8)]
        keys = torch.stack([k[b, :, m].mean(1) for m in members] + [k[b, :, p] for p in (positions[0], positions[-1])], 1)
        values = torch.stack([v[b, :, m].mean(1) for m in members] + [v[b, :, p] for p in (positions[0], positions[-1])], 1)
        expected = dense_reference_attention(q[b:b + 1, :, positions], keys[None], values[None])
        torch.testing.assert_close(out[b:b + 1, :, positions], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("init", ["pooling", "gaussian"])
@pytest.mark.parametrize("sharing", ["none", "key_value"])
def test_padding_invariance(padding, init, sharing):
    attention = mechanism(projection_init=init, projection_sharing=sharing)
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, padding)
    batched = attention(q, k, v, padding_mask=mask)
    real = mask[1]
    alone = attention(q[1:, :, real], k[1:, :, real], v[1:, :, real])
    torch.testing.assert_close(batched[1][:, real], alone[0], atol=1e-5, rtol=1e-5)
    assert batched[1][:, ~real].abs().max() == 0


def test_gradients_equal_the_reference():
    attention = randomise(mechanism(projection_sharing="none")).double()
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, LENGTH, "left")
    grads = torch.autograd.grad(attention(q, k, v, padding_mask=mask).square().sum(),
                                (q, k, v, attention.key_projection))
    expected = torch.autograd.grad(reference(attention, q, k, v, mask).square().sum(),
                                   (q, k, v, attention.key_projection))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-8)


def test_a_row_without_tokens_and_a_single_token_give_zeros_and_exact_attention():
    attention = mechanism()
    q, k, v = qkv(length=4)
    mask = torch.tensor([[False, False, False, False], [False, False, True, False]])
    out = attention(q, k, v, padding_mask=mask)
    assert torch.isfinite(out).all() and out[0].abs().max() == 0 and out[1][:, [0, 1, 3]].abs().max() == 0
    torch.testing.assert_close(out[1, :, 2], v[1, :, 2])


def test_sharing_modes_own_the_parameters_they_say():
    shapes = {sharing: [tuple(p.shape) for p in mechanism(projection_sharing=sharing).parameters()]
              for sharing in ("none", "headwise", "key_value")}
    assert shapes == {"none": [(2, 8, 32)] * 2, "headwise": [(1, 8, 32)] * 2, "key_value": [(1, 8, 32)]}


def test_memory_grows_linearly():
    """With a fixed k the largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32, max_position_embeddings=8192,
                          projected_length=64).train()
    assert_memory_grows_linearly(attention, heads=4)


def test_eval_is_deterministic_and_save_load_gives_identical_outputs(tmp_path):
    # The registry's save hook writes remote code for a registered variant; this test needs only the weights.
    model_config = config(vocab_size=99, num_hidden_layers=2, projection_init="gaussian")
    torch.manual_seed(0)
    model = LinformerForMaskedLM(model_config).eval()
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, :6] = 0
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = LinformerForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


def test_pooling_is_restored_after_meta_init():
    with torch.device("meta"):
        model = LinformerModel(config(vocab_size=99))
    model.to_empty(device="cpu")
    model.init_weights()
    attention = model.encoder.layer[0].attention.self.mechanism
    for projection in attention.projections():
        torch.testing.assert_close(projection[0], attention.key_projection.new_tensor(
            [[1 / 4 if p // 4 == i else 0.0 for p in range(32)] for i in range(8)]))


@pytest.mark.parametrize("field, value", [
    ("projected_length", 0), ("projected_length", 2.5), ("projected_length", 33), ("projection_sharing", "layerwise"),
    ("projection_sharing", "heads"), ("projection_init", "uniform"), ("global_special_tokens", "yes"),
    ("is_decoder", True),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def test_a_sequence_longer_than_the_projection_is_refused():
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        mechanism()(*qkv(length=33))


def test_a_causal_request_is_refused():
    with pytest.raises(ValueError, match="causal=True.*memory_compressed"):
        mechanism()(*qkv(), causal=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype):
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "left")
    expected = attention(q, k, v, padding_mask=mask)
    out = attention.to(dtype)(q.to(dtype), k.to(dtype), v.to(dtype), padding_mask=mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
