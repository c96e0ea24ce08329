"""``reorder`` / ``restore`` (a gather in both directions) equal plain ``index_select``, forward and backward."""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.ops.layout import residue_order
from effzoo.attention.ops.permutation import inverse_permutation, naive_reorder, naive_restore, reorder, restore

ORDERS = {
    "identity": lambda: None,
    "residue-3": lambda: residue_order(23, 3, torch.device("cpu")),
    "random": lambda: torch.randperm(23, generator=torch.Generator().manual_seed(1)),
}


def test_inverse_permutation_is_argsort():
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(inverse_permutation(order), torch.argsort(order))


@pytest.mark.parametrize(
    "fast, naive", [(reorder, naive_reorder), (restore, naive_restore)], ids=["reorder", "restore"]
)
@pytest.mark.parametrize("order_name", list(ORDERS))
def test_equals_index_select(fast, naive, order_name):
    order = ORDERS[order_name]()
    x = torch.randn(2, 3, 23, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 23, 5, dtype=torch.float64)
    out, expected = fast(x, order), naive(x, order)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (gradient,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=0)


@pytest.mark.parametrize("order_name", list(ORDERS))
def test_restore_undoes_reorder(order_name):
    order = ORDERS[order_name]()
    x = torch.randn(2, 3, 23, 5)
    torch.testing.assert_close(restore(reorder(x, order), order), x, rtol=0, atol=0)
