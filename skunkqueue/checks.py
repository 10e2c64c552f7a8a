"""Checks of numbers given as options: each names the option, and none lets NaN or an
infinity through (``nan <= 0`` is false, so a plain comparison would)."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError


def finite_number(value: Any) -> bool:
    """A real int or float (not a bool) that is neither NaN nor infinite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def seconds(name: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as a number of seconds: finite and positive (or >= 0 with ``zero``)."""
    if not finite_number(value) or value < 0 or (value == 0 and not zero):
        kind = "a finite number of seconds >= 0" if zero else "a positive, finite number of seconds"
        raise ConfigurationError(f"{name} must be {kind}, not {value!r}")
    return float(value)


def number_at_least(name: str, value: Any, minimum: float) -> float:
    """``value``: finite and at least ``minimum``."""
    if not finite_number(value) or value < minimum:
        raise ConfigurationError(f"{name} must be a finite number >= {minimum:g}, not {value!r}")
    return float(value)
