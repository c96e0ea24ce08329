"""Validation of mechanism settings: one ValueError style that names the field, the value and the fix."""

from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any, fix: str = "", allow_none: bool = False) -> Any:
    """``value`` if it is a positive int (or None when ``allow_none``), else a ValueError."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        kind = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}. {fix}".strip())
    return value


def non_negative_int(name: str, value: Any, fix: str = "") -> int:
    """``value`` if it is an int >= 0, else a ValueError naming ``name``, the value and the fix."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}. {fix}".strip())
    return value


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value
