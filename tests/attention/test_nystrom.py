"""Nyström attention against its definition written out per sequence, and against exact attention in its limit.

The reference cuts each row's real tokens (in Python, position by position) into the segments the
docstring of ``effzoo/attention/nystrom.py`` defines, averages them into landmarks, forms the three
kernels in float64 with the pseudo-inverse it is given (``torch.linalg.pinv``, or the paper's
iteration written from eq. 16), and lets every real query attend [landmarks with bias log size ;
special keys] under one softmax. In its limit (every token its own landmark) it is the dense
``dense_reference_attention``.
"""

from __future__ import annotations

import math

import pytest
import torch

from effzoo.attention.full import FullAttention
from effzoo.attention.nystrom import NystromAttention, iterative_pinv, landmark_segments
from effzoo.attention.reference import dense_reference_attention, padding_and_causal_pattern
from effzoo.configs.full import FullConfig
from effzoo.configs.nystrom import NystromConfig
from effzoo.modeling.nystrom import (
    NystromForMaskedLM,
    NystromForMultipleChoice,
    NystromForQuestionAnswering,
    NystromForSequenceClassification,
    NystromForTokenClassification,
    NystromModel,
)
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)
LENGTH = 19


def mechanism(**fields) -> NystromAttention:
    return NystromAttention(NystromConfig(**{**TINY, "num_landmarks": 4, **fields})).eval()


def qkv(batch: int = 2, length: int = LENGTH, heads: int = 2, scale: float = 1.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(4)
    q, k, v = [torch.randn(batch, heads, length, 8, generator=generator, dtype=dtype) for _ in range(3)]
    return q * scale, k * scale, v


def padding_mask(batch: int, length: int, padding: str | None, short: int = 6) -> torch.Tensor | None:
    """Row r has ``length - short·r`` real tokens, on the right (``"right"``) or the left of the padding."""
    if padding is None:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    for row in range(batch):
        real = length - short * row
        mask[row] = torch.arange(length) < real if padding == "right" else torch.arange(length) >= length - real
    return mask


def paper_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Xiong et al. 2021, eq. 16: Z₀ = Aᵀ / (‖A‖₁‖A‖∞), Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ)))."""
    identity = torch.eye(a.shape[0], dtype=a.dtype)
    z = a.T / (torch.linalg.matrix_norm(a, ord=1) * torch.linalg.matrix_norm(a, ord=float("inf")))
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def reference_nystrom(q, k, v, mask, num_landmarks: int, special_tokens: bool, pinv=torch.linalg.pinv):
    """Nyström attention from its definition, per sequence and head, in float64."""
    batch, heads, length, dim = q.shape
    real_mask = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask
    out = torch.zeros(batch, heads, length, dim, dtype=torch.float64)
    for b in range(batch):
        real = [p for p in range(length) if real_mask[b, p]]
        special = sorted({real[0], real[-1]}) if special_tokens and real else []
        members = [p for p in real if p not in special]
        n, c = len(members), min(num_landmarks, len(members))
        segments = [members[s * n // c:(s + 1) * n // c] for s in range(c)]
        for h in range(heads):
            Q, K, V = q[b, h].double(), k[b, h].double(), v[b, h].double()
            q_landmarks = torch.stack([Q[s].mean(0) for s in segments]) if c else Q[:0]
            k_landmarks = torch.stack([K[s].mean(0) for s in segments]) if c else K[:0]
            log_sizes = torch.tensor([math.log(len(s)) for s in segments], dtype=torch.float64)
            if n <= num_landmarks:
                x = V[members]  # every member is its own landmark
            else:
                kernel_2 = torch.softmax(q_landmarks @ k_landmarks.T / math.sqrt(dim) + log_sizes, dim=-1)
                kernel_3 = torch.softmax(q_landmarks @ K[members].T / math.sqrt(dim), dim=-1)
                x = pinv(kernel_2) @ kernel_3 @ V[members]
            keys = torch.cat([k_landmarks, K[special]])
            values = torch.cat([x, V[special]])
            bias = torch.cat([log_sizes, torch.zeros(len(special), dtype=torch.float64)])
            for i in real:
                out[b, h, i] = torch.softmax(keys @ Q[i] / math.sqrt(dim) + bias, dim=-1) @ values
    return out


# -- the exact limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("special_tokens", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_one_landmark_per_token_equals_full_attention(special_tokens, padding):
    """num_landmarks ≥ the real tokens: every token is its own landmark and the output is exact attention,
    with the special keys too (their combination with the landmarks shares one normaliser)."""
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, padding)
    expected = dense_reference_attention(q, k, v, padding_and_causal_pattern(mask, LENGTH, LENGTH, False))
    out = mechanism(num_landmarks=LENGTH, global_special_tokens=special_tokens)(q, k, v, padding_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    full = FullAttention(FullConfig(**TINY)).eval()
    torch.testing.assert_close(out, full(q, k, v, padding_mask=mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("special_tokens", [False, True])
def test_a_short_sequence_in_a_long_batch_is_exact(special_tokens):
    """A row with at most num_landmarks real tokens is exact while the longer row beside it is approximated."""
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "left", short=10)  # 19 and 9 real tokens
    attention = mechanism(num_landmarks=9, global_special_tokens=special_tokens)
    out = attention(q, k, v, padding_mask=mask)
    exact = dense_reference_attention(q, k, v, padding_and_causal_pattern(mask, LENGTH, LENGTH, False))
    torch.testing.assert_close(out[1], exact[1], atol=1e-5, rtol=1e-5)
    assert (out[0] - exact[0]).abs().max() > 1e-3  # the long row is not in the limit


# -- the definition ------------------------------------------------------------------------------------


@pytest.mark.parametrize("special_tokens", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("num_landmarks", [3, 4])
def test_nystrom_equals_its_definition_with_the_papers_iteration(special_tokens, padding, num_landmarks):
    """Uneven segments (19 or 13 real tokens over 3 or 4 landmarks), six iterations of eq. 16 in both."""
    q, k, v = qkv(scale=2.0)
    mask = padding_mask(2, LENGTH, padding)
    expected = reference_nystrom(q, k, v, mask, num_landmarks, special_tokens, paper_pinv)
    out = mechanism(num_landmarks=num_landmarks, global_special_tokens=special_tokens)(q, k, v, padding_mask=mask)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("special_tokens", [False, True])
def test_with_enough_iterations_it_equals_the_exact_pseudo_inverse(special_tokens):
    """The iteration converges: at 40 iterations the output is the definition with torch.linalg.pinv."""
    q, k, v = qkv(scale=2.0)
    mask = padding_mask(2, LENGTH, "right")
    expected = reference_nystrom(q, k, v, mask, 4, special_tokens)
    attention = mechanism(global_special_tokens=special_tokens, pinv_iterations=40)
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask).double(), expected, atol=1e-4, rtol=1e-4)


def test_iterative_pinv_converges_to_the_moore_penrose_inverse():
    generator = torch.Generator().manual_seed(0)
    a = (2 * torch.randn(3, 9, 8, generator=generator, dtype=torch.float64)
         @ torch.randn(3, 8, 9, generator=generator, dtype=torch.float64)).softmax(-1)
    torch.testing.assert_close(iterative_pinv(a, 40), torch.linalg.pinv(a), atol=1e-8, rtol=1e-8)
    for matrix, own in zip(a, iterative_pinv(a, 6)):  # each matrix's own norms, not the batch's
        torch.testing.assert_close(own, paper_pinv(matrix))


def test_gradients_equal_the_reference():
    q, k, v = [x.double().requires_grad_() for x in qkv(scale=2.0)]
    mask = padding_mask(2, LENGTH, "left")
    attention = mechanism().double()
    got = torch.autograd.grad(attention(q, k, v, padding_mask=mask).square().sum(), (q, k, v))
    expected = torch.autograd.grad(reference_nystrom(q, k, v, mask, 4, True, paper_pinv).square().sum(), (q, k, v))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_segments_are_contiguous_even_and_skip_padding():
    members = torch.tensor([[False, True, True, True, True, True, True, True, False, False],
                            [True, True, False, True, False, False, False, False, False, False]])
    segments = landmark_segments(members, 3)
    assert segments.sizes.tolist() == [[2, 2, 3], [1, 1, 1]]
    chosen = [[[int(p) for p, t in zip(index, taken) if t] for index, taken in zip(row, row_taken)]
              for row, row_taken in zip(segments.index, segments.taken)]
    assert chosen == [[[1, 2], [3, 4], [5, 6, 7]], [[0], [1], [3]]]


# -- padding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv_kernel_size", [None, 5])
@pytest.mark.parametrize("special_tokens", [False, True])
def test_padding_left_or_right_gives_the_sequence_alone(special_tokens, conv_kernel_size):
    """Padding of any content, on either side, changes nothing: it is never a landmark, key or convolved value."""
    torch.manual_seed(0)
    attention = mechanism(global_special_tokens=special_tokens, conv_kernel_size=conv_kernel_size)
    q, k, v = qkv(batch=1, length=13)
    alone = attention(q, k, v)
    for side in ("left", "right"):
        garbage = [torch.full((1, 2, 6, 8), 1e4) for _ in range(3)]
        padded = [torch.cat([g, x] if side == "left" else [x, g], dim=2) for g, x in zip(garbage, (q, k, v))]
        mask = torch.arange(19) >= 6 if side == "left" else torch.arange(19) < 13
        out = attention(*padded, padding_mask=mask[None])
        real = out[:, :, 6:] if side == "left" else out[:, :, :13]
        torch.testing.assert_close(real, alone, atol=1e-5, rtol=1e-5)
        assert torch.equal(out[:, :, :6] if side == "left" else out[:, :, 13:], torch.zeros(1, 2, 6, 8))


def test_a_row_without_real_tokens_gives_zeros_and_finite_gradients():
    q, k, v = [x.requires_grad_() for x in qkv()]
    mask = padding_mask(2, LENGTH, "right")
    mask[1] = False
    out = mechanism(conv_kernel_size=3)(q, k, v, padding_mask=mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


# -- the convolution and Transformers' Nyströmformer ---------------------------------------------------


def test_the_convolution_adds_each_heads_kernel_over_the_real_values():
    torch.manual_seed(0)
    attention = mechanism(conv_kernel_size=3)
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "right")
    skip = attention(q, k, v, padding_mask=mask) - mechanism()(q, k, v, padding_mask=mask)
    weight = attention.conv.weight[:, 0, :, 0]  # (heads, 3)
    expected = torch.zeros_like(v)
    for b in range(2):
        n = int(mask[b].sum())
        for h in range(2):
            for i in range(n):
                for t in range(3):
                    if 0 <= i + t - 1 < n:
                        expected[b, h, i] += weight[h, t] * v[b, h, i + t - 1]
    torch.testing.assert_close(skip, expected.detach(), atol=1e-5, rtol=1e-5)


def test_equals_transformers_nystromformer_where_its_segments_are_defined():
    """A length divisible by the landmarks, no padding, no special keys: Transformers' NystromformerSelfAttention
    (one sequence and one head, where its batch-wide pinv scaling is each matrix's own), convolution included."""
    from transformers import NystromformerConfig
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerSelfAttention

    torch.manual_seed(0)
    source = NystromformerSelfAttention(NystromformerConfig(
        hidden_size=8, num_attention_heads=1, num_landmarks=4, segment_means_seq_len=16, conv_kernel_size=5,
        attention_probs_dropout_prob=0.0)).eval()
    hidden = torch.randn(1, 16, 8) * 3
    expected = source(hidden)[0]
    attention = NystromAttention(NystromConfig(**{**TINY, "hidden_size": 8, "num_attention_heads": 1},
                                               num_landmarks=4, conv_kernel_size=5, global_special_tokens=False))
    attention.conv.load_state_dict(source.conv.state_dict())
    q, k, v = (layer(hidden).view(1, 16, 1, 8).transpose(1, 2) for layer in (source.query, source.key, source.value))
    with torch.no_grad():
        out = attention.eval()(q, k, v).transpose(1, 2).reshape(1, 16, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# -- cost ----------------------------------------------------------------------------------------------




def test_memory_grows_linearly():
    """With a fixed number of landmarks the largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32, num_landmarks=16, conv_kernel_size=5).train()
    assert_memory_grows_linearly(attention, heads=4,
                                 inputs=lambda length: {"padding_mask": (torch.arange(length) < length - 7)[None]})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype):
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "right")
    expected = attention(q, k, v, padding_mask=mask)
    out = attention.to(dtype)(q.to(dtype), k.to(dtype), v.to(dtype), padding_mask=mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "64"])
def test_num_landmarks_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"num_landmarks must be a positive integer.*num_landmarks=64"):
        NystromConfig(**TINY, num_landmarks=value)


@pytest.mark.parametrize("field, value, message", [
    ("pinv_iterations", 0, r"pinv_iterations must be a positive integer"),
    ("conv_kernel_size", 0, r"conv_kernel_size must be a positive integer or None"),
    ("conv_kernel_size", 4, r"conv_kernel_size must be odd .* conv_kernel_size=5"),
])
def test_other_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        NystromConfig(**TINY, **{field: value})


def test_a_causal_request_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"is_decoder=True .* Set is_decoder=False"):
        NystromAttention(NystromConfig(**TINY, is_decoder=True))
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"causal=True: .* Call with causal=False"):
        mechanism()(q, k, v, causal=True)


# -- models --------------------------------------------------------------------------------------------


def model_config(**fields) -> NystromConfig:
    return NystromConfig(**{**TINY, "vocab_size": 99, "num_hidden_layers": 2, "num_landmarks": 3,
                            "conv_kernel_size": 3, "num_labels": 2, **fields})


def test_eval_is_deterministic_and_save_load_gives_identical_outputs(tmp_path):
    # The registry's save hook writes the remote code of registered variants only; nystrom is not one yet.
    torch.manual_seed(0)
    model = NystromForMaskedLM(model_config()).eval()
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = NystromForMaskedLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.config, NystromConfig) and reloaded.config.num_landmarks == 3
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


@pytest.mark.parametrize("head", [NystromModel, NystromForMaskedLM, NystromForSequenceClassification,
                                  NystromForTokenClassification, NystromForQuestionAnswering])
def test_every_head_runs_and_ignores_right_padding(head):
    torch.manual_seed(0)
    model = head(model_config()).eval()
    input_ids = torch.randint(5, 99, (1, 11))
    with torch.no_grad():
        alone = model(input_ids).to_tuple()[0]
        padded = model(torch.cat([input_ids, torch.zeros(1, 4, dtype=torch.long)], 1),
                       attention_mask=torch.arange(15)[None] < 11).to_tuple()[0]
    if padded.shape[1] == 15:  # per-position outputs (QA: the start logits): the real positions
        padded = padded[:, :11]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_multiple_choice_runs():
    model = NystromForMultipleChoice(model_config()).eval()
    logits = model(torch.randint(5, 99, (2, 3, 9))).logits
    assert logits.shape == (2, 3)


def test_the_convolution_is_initialised_after_meta_init_and_zeroed_at_conversion():
    config = model_config()
    with torch.device("meta"):
        model = NystromModel(config)
    model.to_empty(device="cpu")
    model.init_weights()
    mechanism_of = model.encoder.layer[0].attention.self.mechanism
    assert torch.isfinite(mechanism_of.conv.weight).all() and mechanism_of.conv.weight.abs().sum() > 0
    attention = model.encoder.layer[0].attention.self
    mechanism_of.init_from_projections(attention.query, attention.key, attention.value)
    assert torch.equal(mechanism_of.conv.weight, torch.zeros_like(mechanism_of.conv.weight))
