"""Waiting on a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def timed_wait(backend: Any, timeout: float, routes: list[str] | None) -> Callable[[], float]:
    """Start ``backend.wait(timeout, routes)`` in a thread; the returned function joins it
    (failing the test if it never returns) and gives how long the wait took."""
    took: list[float] = []

    def run() -> None:
        started = time.monotonic()
        backend.wait(timeout, routes)
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> float:
        thread.join(timeout * 2)
        if not took:
            pytest.fail("the waiting thread never returned")
        return took[0]

    return join
