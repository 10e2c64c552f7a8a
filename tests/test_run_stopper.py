"""Stopping a run the worker no longer holds (worker/stopping.py), in this process.

The signal path needs the main thread, which pytest runs tests in: a job here is a
function called through ``JobCall`` while another thread asks the stopper to stop it.
The end-to-end tests (tests/e2e/test_stop_running.py) do the same with worker processes.
A worker in a thread has no stopper: its job runs on, and only its outcome is dropped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skunkqueue import JobCancelled, JobTimeout, SkunkQueue
from skunkqueue.model import JobRecord
from skunkqueue.worker import runner
from skunkqueue.worker.execute import JobCall
from skunkqueue.worker.stopping import STOP_SIGNAL, RunStopper

from .threads import worker_thread
from .waiting import wait_until

WAIT = 10.0


class Runs:
    """What a worker's main thread runs: ``current`` is the claimed record, or None."""

    def __init__(self) -> None:
        self.current: JobRecord | None = None

    def __call__(self) -> JobRecord | None:
        return self.current


def record(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, event="tests.job", route="foo", payload="{}")


@pytest.fixture
def stopper() -> Iterator[tuple[RunStopper, JobCall, Runs]]:
    previous = signal.getsignal(STOP_SIGNAL)
    call, runs = JobCall(in_main_thread=True), Runs()
    stopper = RunStopper(call, runs)
    stopper.install()
    yield stopper, call, runs
    signal.signal(STOP_SIGNAL, previous)


def once_in_job(call: JobCall, action) -> threading.Thread:
    """Run ``action`` in a thread (the heartbeat's part) once the job's code has begun."""

    def run() -> None:
        wait_until(lambda: call.in_job, WAIT, what="the job's code to begin")
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_run_asked_about_is_interrupted_in_its_own_code(stopper) -> None:
    stop, call, runs = stopper
    runs.current = job = record("a")
    once_in_job(call, lambda: stop.stop(job, "job a is no longer held: it was cancelled"))
    began = time.monotonic()
    with pytest.raises(JobCancelled, match="it was cancelled") as raised:
        call(time.sleep, [WAIT], {}, None)  # one long sleep, cut short
    assert time.monotonic() - began < WAIT / 2
    assert isinstance(raised.value, JobTimeout)  # cleaned up after as a timeout is


def test_another_run_is_never_interrupted_not_even_of_the_same_job(stopper) -> None:
    stop, call, runs = stopper
    earlier = record("a")
    runs.current = record("a")  # a later delivery of the same job: another record
    timer = once_in_job(call, lambda: stop.stop(earlier, "stop the earlier run"))

    def job_code() -> str:
        timer.join()  # the signal has been sent: its handler runs in this thread now
        time.sleep(0.1)  # pause: a job body that must take time, where a wrong stop would land
        return "done"

    assert call(job_code, [], {}, None) == "done"
    assert stop.overdue(grace=0.0) is None  # that run is over: nothing to enforce


def test_a_stop_asked_before_the_job_code_begins_arrives_once_it_does(stopper) -> None:
    stop, call, runs = stopper
    runs.current = job = record("a")
    stop.stop(job, "stop")  # the signal comes while no job code runs: nothing raised
    assert stop.overdue(grace=WAIT) is None

    def job_code() -> None:
        stop.overdue(grace=WAIT)  # the heartbeat's next look signals again
        time.sleep(WAIT)  # pause: a job body that must take time (it is cut short)

    with pytest.raises(JobCancelled):
        call(job_code, [], {}, None)


def test_a_run_that_ignores_the_stop_is_overdue_after_the_grace(stopper) -> None:
    stop, call, runs = stopper
    runs.current = job = record("a")
    once_in_job(call, lambda: stop.stop(job, "stop"))
    ignored = []

    def stubborn() -> None:
        deadline = time.monotonic() + WAIT
        while not ignored and time.monotonic() < deadline:
            try:
                time.sleep(0.01)  # pause: a job body that must take time
            except JobCancelled as exc:
                ignored.append(exc)

    call(stubborn, [], {}, None)
    assert len(ignored) == 1
    assert stop.overdue(grace=0.0) is job  # the worker's process must go
    runs.current = None
    assert stop.overdue(grace=0.0) is None


def test_an_async_job_stopped_while_its_loop_waits_does_not_resume_in_the_next(stopper) -> None:
    stop, call, runs = stopper
    import asyncio

    resumed = []

    async def waits() -> None:
        try:
            await asyncio.sleep(WAIT)
        finally:
            resumed.append("unwound")  # cancelled when abandoned, not later

    runs.current = job = record("a")
    once_in_job(call, lambda: stop.stop(job, "stop"))
    with pytest.raises(JobCancelled):
        call(waits, [], {}, None)
    assert resumed == ["unwound"]
    runs.current = record("b")

    async def quick() -> str:
        await asyncio.sleep(0.01)
        return "b"

    assert call(quick, [], {}, None) == "b"
    assert resumed == ["unwound"]
    call.close()


# -- a worker in a thread: no signals -----------------------------------------------------


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkunkQueue]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "IDLE_WAIT", 0.05)
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=f"memory://{uuid.uuid4().hex}")
    yield q
    q.close()


def test_a_thread_worker_runs_a_cancelled_job_on_but_never_stores_its_outcome(
    queue: SkunkQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="skunkqueue.worker")
    started, gate = threading.Event(), threading.Event()

    @queue.event(routes=["foo"])
    def blocked() -> str:
        started.set()
        gate.wait(WAIT)
        return "finished anyway"

    @queue.event(routes=["foo"])
    def quick() -> str:
        return "next"

    with worker_thread(queue, lease=0.6):  # a heartbeat every 0.2 s
        run = blocked.fire()
        assert started.wait(WAIT)
        assert queue.cancel(run.id, "not needed", running=True)
        wait_until(lambda: "it runs on in this thread" in caplog.text, WAIT, what="the notice")
        gate.set()
        assert quick.fire().wait(timeout=WAIT) == "next"
    stored = queue.backend.get(run.id, queue.backend.now())
    assert stored is not None
    assert (stored.state, stored.error, stored.result) == (
        "cancelled",
        {"reason": "not needed"},
        None,
    )
    assert "lease lost before its" not in caplog.text  # no outcome was even sent
