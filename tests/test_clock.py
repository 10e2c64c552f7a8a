"""The store's clock as a process reads it: never ahead of the store, whatever its own says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from skunkqueue.persistence import clock, open_backend
from skunkqueue.persistence.clock import StoreClock

TRUE_TIME = time.time


def shift_process_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(time, "time", lambda: TRUE_TIME() + seconds)


@pytest.mark.parametrize("shift", [-30.0, 30.0])
def test_a_reading_follows_the_store_and_is_never_ahead_of_it(
    monkeypatch: pytest.MonkeyPatch, shift: float
) -> None:
    def store() -> float:  # a store whose clock is right, its reply 1 ms on the way
        read = TRUE_TIME()
        arrives = time.monotonic() + 0.001
        while time.monotonic() < arrives:
            pass
        return read

    shift_process_clock(monkeypatch, shift)
    store_clock = StoreClock(store)
    for _ in range(200):
        before = TRUE_TIME()
        estimate = store_clock.now()
        after = TRUE_TIME()
        assert estimate <= after, "ahead of the store's clock"
        assert estimate >= before - 0.01, "more than a round trip behind"
    assert store_clock.offset() == pytest.approx(-shift, abs=0.01)


def test_the_store_is_read_again_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = []

    def store() -> float:
        readings.append(1)
        return TRUE_TIME() + 100.0

    store_clock = StoreClock(store)
    store_clock.now()
    store_clock.now()
    assert len(readings) == 1
    monkeypatch.setattr(clock, "REFRESH_EVERY", 0.0)
    store_clock.now()
    assert len(readings) == 2


def test_within_the_tolerance_the_process_keeps_its_own_clock() -> None:
    store_clock = StoreClock(lambda: TRUE_TIME() - 0.004, tolerance=0.02)
    assert store_clock.offset() == 0.0
    before = TRUE_TIME()
    assert before <= store_clock.now() <= TRUE_TIME()


def test_a_store_without_a_clock_leaves_the_process_its_own() -> None:
    backend = open_backend("memory://", "clockless")
    assert backend.clock_offset() == 0.0
    before = time.time()
    assert before <= backend.now() <= time.time()


@pytest.mark.parametrize("shift", [-45.0, 45.0])
def test_sqlite_tells_the_time_by_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shift: float, far_from_utc: None
) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'jobs.db'}", "clock")
    shift_process_clock(monkeypatch, shift)
    before = TRUE_TIME()
    now = backend.now()
    assert before - 0.02 <= now <= TRUE_TIME() + 0.001
    assert backend.clock_offset() == pytest.approx(-shift, abs=0.02)
    assert (tmp_path / "jobs.db-clock").exists()
    backend.close()


def test_redis_tells_the_time_by_the_server(
    redis_server, monkeypatch: pytest.MonkeyPatch, far_from_utc: None
) -> None:
    backend = open_backend(redis_server.url, "clock")
    shift_process_clock(monkeypatch, -60.0)
    before = TRUE_TIME()
    now = backend.now()
    assert before - 0.01 <= now <= TRUE_TIME()
    assert backend.clock_offset() == pytest.approx(60.0, abs=0.01)
    backend.close()


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch):
    """A local time zone 10 hours from UTC: a time read as local instead of UTC shows."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_mongodb_tells_the_time_by_the_server(
    mongo_server, monkeypatch: pytest.MonkeyPatch, far_from_utc: None
) -> None:
    backend = open_backend(mongo_server.url, "clock")
    shift_process_clock(monkeypatch, 60.0)
    before = TRUE_TIME()
    now = backend.now()
    assert before - 0.05 <= now <= TRUE_TIME()
    assert backend.clock_offset() == pytest.approx(-60.0, abs=0.05)
    backend.close()
