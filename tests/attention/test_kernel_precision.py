"""Kernel attention in float16 and bfloat16 on CPU, against the same mechanism in float32.

A mechanism built in a half dtype keeps its features (projection, Hedgehog's W and b) in that
dtype but computes features, states and sums in float32 and rounds once, at the output. So its
output must equal the float32 mechanism with the same (rounded) features and inputs to within
that one rounding: |half − float32| ≤ u · max|float32|, u the unit roundoff of the dtype
(eps / 2: 3.9e-3 for bfloat16, 4.9e-4 for float16). Arithmetic done in the half dtype misses
that bound (by 2× at 256 tokens, measured), and a test below checks that it does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from effzoo.attention import feature_maps, kernel
from effzoo.attention.feature_maps import draw_projection
from effzoo.attention.kernel import KernelAttention

from .test_kernel import KERNELS, kernel_reference, make, padding, qkv

HALF_DTYPES = [torch.bfloat16, torch.float16]
LENGTH, CHUNK = 37, 4  # the chunk does not divide the length
#: Slack for float32 round-off on top of the one rounding to the half dtype.
FLOAT32_SLACK = 1e-5


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build tensors in ``dtype``, as ``from_pretrained(dtype=...)`` does."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def half_and_float32(dtype: torch.dtype, kernel_name: str, **fields) -> tuple[KernelAttention, KernelAttention]:
    """The mechanism built in ``dtype`` and a float32 copy holding exactly its (rounded) features."""
    torch.manual_seed(0)
    with default_dtype(dtype):
        half = make(kernel_name, **fields)
    assert all(tensor.dtype == dtype for tensor in half.state_dict().values())
    full = make(kernel_name, **fields)
    full.load_state_dict(half.state_dict())
    return half, full


def half_inputs(dtype: torch.dtype, length: int = LENGTH) -> list[torch.Tensor]:
    return [t.to(dtype) for t in qkv(length=length)]


def rounding_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| in units of the largest rounding of ``want`` to ``got``'s dtype, u · max|want|."""
    unit = torch.finfo(got.dtype).eps / 2 + FLOAT32_SLACK
    return ((got.float() - want).abs().amax() / (unit * want.abs().amax())).item()


def assert_rounded_once(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """``got`` is a finite ``dtype`` tensor within one rounding of the float32 ``want``."""
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert rounding_error(got, want) <= 1.0, rounding_error(got, want)


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_causal_chunks_equal_unchunked_and_naive_in_float32(kernel_name: str) -> None:
    """Chunks of 4 over 37 tokens, one chunk of all of them, and the explicit L×L kernel matrix."""
    chunked = make(kernel_name, causal_chunk_size=CHUNK)
    unchunked = make(kernel_name, causal_chunk_size=LENGTH)
    unchunked.load_state_dict(chunked.state_dict())
    q, k, v = qkv(length=LENGTH)
    mask = padding(3, LENGTH, "left")
    out = chunked(q, k, v, padding_mask=mask, causal=True)
    torch.testing.assert_close(out, unchunked(q, k, v, padding_mask=mask, causal=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, kernel_reference(chunked, q, k, v, mask, True), atol=1e-5, rtol=1e-5)


CASES = {
    **{f"{name}-causal-chunked": (name, {"causal_chunk_size": CHUNK}, True) for name in KERNELS},
    "relu": ("relu", {}, False),
    "hedgehog": ("hedgehog", {}, False),
    "hedgehog-hybrid": ("hedgehog", {"hybrid_window": 4, "hybrid_special_tokens": True}, False),
}


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_half_precision_equals_float32_rounded_once(dtype: torch.dtype, case: str) -> None:
    """Output and input gradients of the half mechanism against float32 with the same features."""
    kernel_name, fields, causal = CASES[case]
    half, full = half_and_float32(dtype, kernel_name, **fields)
    mask = padding(3, LENGTH, "left")
    inputs = [t.requires_grad_() for t in half_inputs(dtype)]
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    out = half(*inputs, padding_mask=mask, causal=causal)
    expected = full(*reference_inputs, padding_mask=mask, causal=causal)
    assert_rounded_once(out, expected, dtype)

    weights = torch.randn(out.shape).to(dtype).float()  # the same upstream gradient for both
    gradients = torch.autograd.grad((out.float() * weights).sum(), inputs)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), reference_inputs)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        assert_rounded_once(gradient, expected_gradient, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("kernel_name", ["softmax", "relu"])
def test_half_precision_feature_redraw(dtype: torch.dtype, kernel_name: str) -> None:
    """Redrawn in training every 2 calls: each draw is the float32 one rounded, and the output moves
    with it, within one rounding of float32 with the features of that call."""
    half, full = half_and_float32(dtype, kernel_name, feature_redraw_interval=2)
    half.train()
    inputs = half_inputs(dtype)
    previous = stale = None
    for call in range(5):
        torch.manual_seed(call)
        out = half(*inputs, causal=True)
        projection = half.feature_map.projection.clone()
        full.load_state_dict(half.state_dict())
        expected = full(*(t.float() for t in inputs), causal=True)
        assert_rounded_once(out, expected, dtype)
        if call in (2, 4):  # redrawn from the generator's state of this call
            drawn = draw_projection(*projection.shape, True, torch.Generator().manual_seed(call))
            assert torch.equal(projection, drawn.to(dtype)) and not torch.equal(projection, previous)
            assert rounding_error(out, stale) > 1.0  # the old features' output: a wrong answer, told apart
        elif previous is not None:
            assert torch.equal(projection, previous)
        previous, stale = projection, expected


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_the_bound_rejects_arithmetic_in_the_half_dtype(dtype: torch.dtype, monkeypatch) -> None:
    """Without the upcast to float32, features, states and sums are computed in ``dtype``: the result
    is finite and near, but outside the one-rounding bound the tests above hold the mechanism to."""
    half, full = half_and_float32(dtype, "softmax", causal_chunk_size=CHUNK)
    inputs = half_inputs(dtype, length=256)
    expected = full(*(t.float() for t in inputs), causal=True)
    assert_rounded_once(half(*inputs, causal=True), expected, dtype)
    for module in (feature_maps, kernel):
        monkeypatch.setattr(module, "upcast", lambda x: x)
    out = half(*inputs, causal=True)
    assert torch.isfinite(out).all()
    assert rounding_error(out, expected) > 1.5
