"""The zoo-wide linear-memory check: no mechanism that claims less builds an L × L tensor.

The profiler's largest single allocation of one forward + backward is measured at two lengths;
doubling L may at most about double it (quadratic would be 4×), and it must stay an order of
magnitude below the heads × L × L floats of exact attention's scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def largest_allocation(fn: Callable[[], Any]) -> int:
    """Bytes of the largest single allocation the profiler sees while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


def step_peak(mechanism: torch.nn.Module, length: int, heads: int,
              inputs: Callable[[int], dict[str, Any]] | None = None) -> int:
    """The largest allocation of ``mechanism``'s forward + backward on random (1, heads, length, 8) inputs;
    ``inputs(length)`` gives any further keyword inputs (a padding mask, hidden states)."""
    q, k, v = [torch.randn(1, heads, length, 8, requires_grad=True) for _ in range(3)]
    extra = inputs(length) if inputs is not None else {}
    return largest_allocation(lambda: mechanism(q, k, v, **extra).sum().backward())


def assert_memory_grows_linearly(mechanism: torch.nn.Module, heads: int,
                                 inputs: Callable[[int], dict[str, Any]] | None = None,
                                 quadratic_share: float = 1.0) -> None:
    """From 4,096 to 8,192 tokens the peak at most about doubles, and it stays an order of magnitude
    below heads × L × L floats (times ``quadratic_share`` for a mechanism whose keys are L/rate)."""
    small, large = step_peak(mechanism, 4096, heads, inputs), step_peak(mechanism, 8192, heads, inputs)
    assert large < 2.6 * small, (small, large)  # quadratic would be 4×
    assert large < heads * 8192 * 8192 * 4 * quadratic_share / 10, large
