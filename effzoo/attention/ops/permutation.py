"""Taking the positions of a tensor in another order, and back, as block layouts need.

A layout may cut the sequence in another order of the positions (a residue order makes dilated
windows, strides and grid columns contiguous). :func:`reorder` and :func:`restore` move the
positions of a (..., L, dim) tensor into that order and out of it; their backward is a gather
too, not the scatter-add of a plain ``index_select``. :func:`naive_reorder` and
:func:`naive_restore` are the plain forms the tests compare them with.
"""

from __future__ import annotations

from typing import Any

import torch


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: one scatter, O(L) (an argsort sorts, O(L log L))."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device, dtype=order.dtype)
    return inverse


class _Reorder(torch.autograd.Function):
    """``x.index_select(2, order)`` for a permutation ``order``; its backward is a gather too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order)
        return x.index_select(2, order)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (order,) = ctx.saved_tensors
        return grad.index_select(2, inverse_permutation(order)), None


def reorder(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """(..., L, dim) with its positions taken in ``order`` (a permutation; None: as is)."""
    return x if order is None else _Reorder.apply(x, order)


def restore(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The inverse of :func:`reorder`."""
    return x if order is None else _Reorder.apply(x, inverse_permutation(order))


def naive_reorder(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The reference of :func:`reorder`: a plain ``index_select`` (its backward is a scatter-add)."""
    return x if order is None else x.index_select(2, order)


def naive_restore(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The reference of :func:`restore`: ``index_select`` by the inverse that ``argsort`` finds."""
    return x if order is None else x.index_select(2, torch.argsort(order))
