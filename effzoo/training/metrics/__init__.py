"""Metrics as local ``evaluate`` modules, shipped with the package so that they work offline.

``evaluate.load("accuracy")`` fetches its code from the Hub; ``load_metric("accuracy")``
goes through ``evaluate.load`` too, with the module's path inside effzoo.
"""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS_DIRECTORY = Path(__file__).parent
AVAILABLE_METRICS = tuple(sorted(p.name for p in METRICS_DIRECTORY.iterdir() if (p / f"{p.name}.py").is_file()))


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The metric ``name`` (one of ``AVAILABLE_METRICS``) through ``evaluate.load``, offline."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"Unknown metric {name!r}; effzoo ships: {', '.join(AVAILABLE_METRICS)}.")
    return evaluate.load(str(METRICS_DIRECTORY / name))
