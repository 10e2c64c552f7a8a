"""A ``WorkerPool`` run from the test process (its workers are real forked processes, its
scheduler candidate a thread): stop bounds, and a scheduler thread that dies."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.persistence.base import SCHEDULER_LEASE
from skunkqueue.scheduler import Scheduler
from skunkqueue.worker import WorkerPool
from skunkqueue.worker import pool as pool_module

from .waiting import wait_until

WAIT = 20.0


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkunkQueue]:
    monkeypatch.chdir(tmp_path)
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=f"sqlite:///{tmp_path}/jobs.db", lease=5.0)
    yield q
    q.close()


def supervise(pool: WorkerPool) -> threading.Thread:
    def run() -> None:
        pool.start()
        pool._supervise()

    thread = threading.Thread(target=run, name="pool", daemon=True)
    thread.start()
    return thread


def test_an_interrupted_pool_kills_a_job_that_ignores_the_interrupt(
    queue: SkunkQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "INTERRUPT_GRACE", 1.0)
    flag = tmp_path / "running"

    @queue.event(routes=["foo"])
    def stubborn() -> None:
        flag.touch()
        while True:
            try:
                time.sleep(0.05)  # pause: a job body that ignores interrupts
            except BaseException:
                pass

    run = stubborn.fire()
    pool = WorkerPool(queue.name, ["foo"], url=queue.config.url, with_scheduler=False)
    thread = supervise(pool)
    wait_until(flag.exists, WAIT, what="the job running")
    stopped_at = time.monotonic()
    pool.stop(graceful=False)
    thread.join(WAIT)
    assert not thread.is_alive(), "the pool did not stop"
    assert time.monotonic() - stopped_at < 1.0 + 5.0
    record = run.record()
    assert record is not None
    # Interrupted by the pool's own stop, so handed back and not counted against it.
    assert (record.state, record.deliveries, record.owner) == ("queued", 0, None)


def test_a_scheduler_thread_that_dies_is_started_again(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []

    class DiesOnce(Scheduler):
        def run(self) -> None:
            starts.append(1)
            if len(starts) == 1:
                raise SystemExit("a scheduler thread ended by something unexpected")
            super().run()

    monkeypatch.setattr(pool_module, "Scheduler", DiesOnce)
    pool = WorkerPool(queue.name, ["foo"], url=queue.config.url)
    thread = supervise(pool)
    try:
        lease: Any = wait_until(
            lambda: queue.backend.leases(SCHEDULER_LEASE, time.time()), WAIT, what="a leader"
        )
        assert len(starts) == 2
        assert lease[0].info["pid"] == os.getpid()  # the supervisor's own thread
    finally:
        pool.stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    # It resigned on the way out: a standby elsewhere could lead at once.
    assert not queue.backend.leases(SCHEDULER_LEASE, time.time())
