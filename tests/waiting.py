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
        time.sleep(interval)  # pause: the poll interval of wait_until, which has a deadline


class TimedWait:
    """A ``backend.wait(timeout, routes)`` running in a thread of its own."""

    def __init__(self, backend: Any, timeout: float, routes: list[str] | None) -> None:
        self.timeout = timeout
        self._began = threading.Event()
        self._took: list[float] = []
        backend.wait_began = self._began.set

        def run() -> None:
            started = time.monotonic()
            try:
                backend.wait(timeout, routes)
            finally:
                backend.wait_began = None
            self._took.append(time.monotonic() - started)

        self._thread = threading.Thread(target=run)
        self._thread.start()

    def begun(self) -> None:
        """Return once the wait is listening (the backend's ``wait_began`` hook fired), so a
        change made now happens during the wait, not before it."""
        if not self._began.wait(self.timeout):
            pytest.fail("the wait never began listening")

    def __call__(self) -> float:
        """Join the wait (failing the test if it never returns); how long it took."""
        self._thread.join(self.timeout * 2)
        if not self._took:
            pytest.fail("the waiting thread never returned")
        return self._took[0]


def timed_wait(backend: Any, timeout: float, routes: list[str] | None) -> TimedWait:
    """Start ``backend.wait(timeout, routes)`` in a thread; call the result to join it and
    get how long the wait took, ``.begun()`` to know it is listening."""
    return TimedWait(backend, timeout, routes)
