"""The store's clock, as every process of a queue reads it.

Every decision that compares with now (is a job due, has a lease ended, who leads) is
made with one clock: the store's, where the store has one. A process reads the store's
time now and then and carries it forward on its own monotonic clock, so its wall clock
may be off by any amount, or be stepped by NTP, without changing what it decides.

A reading is taken as if the store answered at the moment its reply arrived, so the
estimate is never ahead of the store: at worst it lags by one round trip. A job is then
never due early, and a lease never ends early, by the store's clock; they may be late by
that round trip (well under a millisecond on a local network).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Seconds between readings of the store's clock. Between two, a process's monotonic
#: clock drifts by parts per million: microseconds.
REFRESH_EVERY = 5.0
#: A reading whose round trip took longer than this is taken again (up to ``attempts``
#: times, ATTEMPTS unless the store says), keeping the fastest: a slow one widens the lag.
GOOD_ROUND_TRIP = 0.002
ATTEMPTS = 3


class StoreClock:
    """The store's time. ``read_store`` returns the store's current epoch seconds; ``None``
    means the store has no clock and this process's own is the truth.

    ``now()`` is never ahead of the store's clock: what decides that something is due or
    has ended uses it, so nothing happens early. ``latest()`` is never behind it: what
    records a moment that has passed (a job's start) or counts a delay from now uses it,
    so a start is never recorded before it happened and a delay is never cut short. The
    two are one reading's uncertainty apart: its round trip, plus ``resolution`` (how
    coarsely the store tells the time)."""

    def __init__(
        self,
        read_store: Callable[[], float] | None,
        *,
        tolerance: float = 0.0,
        attempts: int = ATTEMPTS,
        resolution: float = 0.0,
    ) -> None:
        self._read_store = read_store
        self._attempts = attempts
        self._resolution = resolution
        # A store whose clock is read coarsely (a file system's timestamp) leaves this
        # process's own clock alone while the two agree within ``tolerance``.
        self._tolerance = tolerance
        self._lock = threading.Lock()
        # (the store's time, at this monotonic instant, store minus wall clock then, the
        # reading's uncertainty): one tuple, replaced whole, so a thread reading it never
        # sees half of a new reading.
        self._reading: tuple[float, float, float, float] = (0.0, float("-inf"), 0.0, 0.0)

    def now(self) -> float:
        if self._read_store is None:
            return time.time()
        if time.monotonic() - self._reading[1] >= REFRESH_EVERY:
            self._measure()
        store_at, mono_at, offset, _ = self._reading
        if offset == 0.0:
            return time.time()
        return store_at + (time.monotonic() - mono_at)

    def latest(self) -> float:
        now = self.now()
        store_at, mono_at, offset, uncertainty = self._reading
        return now if offset == 0.0 else now + uncertainty

    def offset(self) -> float:
        """Seconds to add to this process's wall clock to get the store's, as last read
        (0 where the store has no clock, or agrees within its reading's precision)."""
        if self._read_store is not None and time.monotonic() - self._reading[1] >= REFRESH_EVERY:
            self._measure()
        return self._reading[2]

    def _measure(self) -> None:
        assert self._read_store is not None
        with self._lock:
            if time.monotonic() - self._reading[1] < REFRESH_EVERY:
                return  # another thread just did
            best: tuple[float, float, float, float] | None = None
            for _ in range(self._attempts):
                sent = time.monotonic()
                store = self._read_store()
                arrived = time.monotonic()
                wall = time.time()
                if best is None or arrived - sent < best[0]:
                    best = (arrived - sent, store, arrived, wall)
                if arrived - sent <= GOOD_ROUND_TRIP:
                    break
            round_trip, store, arrived, wall = best
            offset = store - wall
            self._reading = (
                store,
                arrived,
                0.0 if abs(offset) <= self._tolerance else offset,
                round_trip + self._resolution,
            )
