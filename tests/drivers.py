"""Drivers the tests need, imported so that CI can never go green by testing nothing."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest


def require(module: str) -> Any:
    """Import a driver the tests need: a missing one skips on a developer's machine and
    fails at collection under CI, where .ci/run must have installed it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"{module} is not installed, and CI is set: {exc}") from exc
        pytest.skip(f"{module} is not installed", allow_module_level=True)
