"""A worker stops a job it no longer holds: cancelled while running, or taken by another
worker after its lease lapsed. Real worker pools, real signals."""

from __future__ import annotations

import os
import signal
import time

import pytest

from skunkqueue.persistence.base import SCHEDULER_LEASE

from .conftest import E2E, Proc, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("e2e", ["sqlite", "redis"], indirect=True)]

LEASE = 3.0  # seconds: a heartbeat every second
STOPPED_WITHIN = LEASE / 3 + 2.0  # one heartbeat, plus a margin for a loaded machine

TASKS = """
import os
import time
from pathlib import Path

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
HERE = Path(__file__).parent


def note(name, what):
    with open(HERE / f'{name}.notes', 'a') as notes:
        notes.write(f'{what} {os.getpid()} {time.time()!r}\\n')


@queue.event(routes=['foo'])
def pid():
    return os.getpid()


@queue.event(routes=['foo'])
def sleeper(name):
    note(name, 'started')
    try:
        time.sleep(60)
    except BaseException as exc:
        note(name, type(exc).__name__)
        raise
    note(name, 'finished')


@queue.event(routes=['foo'])
def stubborn(name):
    note(name, 'started')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except BaseException as exc:
            note(name, type(exc).__name__)
    note(name, 'finished')


@queue.event(routes=['foo'])
def steps(name):
    # short sleeps: 60 s on its first delivery, 1 s on any later one
    note(name, 'started')
    starts = (HERE / f'{name}.notes').read_text().count('started')
    deadline = time.monotonic() + (60 if starts == 1 else 1)
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except BaseException as exc:
        note(name, type(exc).__name__)
        raise
    note(name, 'finished')
    return os.getpid()
"""


def start_pool(e2e: E2E, *extra: str, scheduler: bool = True) -> Proc:
    worker = e2e.worker("foo", extra=("--lease", str(LEASE), *extra), scheduler=scheduler)
    return worker


def notes(e2e: E2E, name: str) -> list[tuple[str, int, float]]:
    path = e2e.dir / f"{name}.notes"
    if not path.exists():
        return []
    return [
        (w, int(p), float(t))
        for w, p, t in (line.split() for line in path.read_text().splitlines())
    ]


def noted(e2e: E2E, name: str, what: str) -> list[tuple[int, float]]:
    return [(pid, at) for w, pid, at in notes(e2e, name) if w == what]


def ready(e2e: E2E, workers: int = 1) -> None:
    e2e.wait_for_workers(workers)
    backend = e2e.queue().backend
    wait_until(lambda: backend.leases(SCHEDULER_LEASE, time.time()), what="a leading scheduler")
    e2e.write_module("stop_tasks", TASKS)


def cancel_when_started(e2e: E2E, tasks, name: str, job_id: str) -> float:
    """Cancel the running job from the CLI once its code has begun; when the store did."""
    wait_until(lambda: noted(e2e, name, "started"), what=f"{name} to start")
    refused = e2e.cli("cancel", job_id)
    assert refused.returncode == 1
    assert f"not cancelled {job_id}: it is running (--running stops it)" in refused.stdout
    done = e2e.cli("cancel", job_id, "--running", "--reason", "partner API down")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cancelled {job_id}" in done.stdout
    return tasks.queue.backend.get(job_id, tasks.queue.backend.now()).finished_at


def assert_cancelled(tasks, job_id: str) -> None:
    record = tasks.queue.backend.get(job_id, tasks.queue.backend.now())
    assert record is not None
    assert (record.state, record.error) == ("cancelled", {"reason": "partner API down"})
    assert (record.attempts, record.deliveries, record.owner) == (0, 1, None)


def test_a_job_cancelled_while_running_stops_and_its_worker_goes_on(e2e: E2E) -> None:
    worker = start_pool(e2e)
    ready(e2e)
    tasks = e2e.import_module("stop_tasks")

    run = tasks.sleeper.fire("sleeper")
    cancelled_at = cancel_when_started(e2e, tasks, "sleeper", run.id)
    stopped = wait_until(
        lambda: noted(e2e, "sleeper", "JobCancelled"), STOPPED_WITHIN + 5, what="the job to stop"
    )
    assert stopped[0][1] - cancelled_at < STOPPED_WITHIN
    assert noted(e2e, "sleeper", "finished") == []
    worker.wait_for_output(f"job {run.id} is no longer held by worker")
    assert "it was cancelled: partner API down; stopping it" in worker.output()

    ((runner_pid, _),) = noted(e2e, "sleeper", "started")
    assert tasks.pid.fire().wait(timeout=10) == runner_pid  # the same process serves on
    assert_cancelled(tasks, run.id)  # its outcome was never stored over the cancel


def test_a_cancelled_job_that_ignores_the_stop_loses_its_process(e2e: E2E) -> None:
    e2e.expect(r"stubborn ignored being stopped", r"died with exit code 76")
    worker = start_pool(e2e)
    ready(e2e)
    tasks = e2e.import_module("stop_tasks")

    run = tasks.stubborn.fire("stubborn")
    cancelled_at = cancel_when_started(e2e, tasks, "stubborn", run.id)
    ignored = wait_until(
        lambda: noted(e2e, "stubborn", "JobCancelled"), STOPPED_WITHIN + 5, what="the soft stop"
    )
    assert ignored[0][1] - cancelled_at < STOPPED_WITHIN
    ((stubborn_pid, _),) = noted(e2e, "stubborn", "started")
    wait_until(lambda: "died with exit code 76" in worker.output(), what="the process to go")

    fresh_pid = tasks.pid.fire().wait(timeout=15)
    assert fresh_pid != stubborn_pid  # its replacement serves on
    assert noted(e2e, "stubborn", "finished") == []
    assert_cancelled(tasks, run.id)


def test_a_job_taken_by_another_worker_is_stopped_on_the_frozen_one(e2e: E2E) -> None:
    e2e.expect(r"lost the lease on job", r"starts no job and claims none", r"lost the lease")
    pools = [start_pool(e2e), start_pool(e2e, scheduler=False)]  # the first one leads
    ready(e2e, workers=2)
    tasks = e2e.import_module("stop_tasks")

    run = tasks.steps.fire("steps")
    ((frozen_pid, _),) = wait_until(lambda: noted(e2e, "steps", "started"), what="a first run")
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: len(noted(e2e, "steps", "started")) == 2, LEASE * 4, what="a second delivery"
        )
    finally:
        os.kill(frozen_pid, signal.SIGCONT)
    thawed_at = time.time()
    stopped = wait_until(
        lambda: noted(e2e, "steps", "JobCancelled"),
        STOPPED_WITHIN + 5,
        what="the first run to stop",
    )
    assert stopped == [(frozen_pid, stopped[0][1])]
    assert stopped[0][1] - thawed_at < STOPPED_WITHIN
    said = [line for pool in pools for line in pool.output().splitlines() if run.id in line]
    assert any("its lease lapsed and worker" in line and "runs it now" in line for line in said)

    result = run.wait(timeout=LEASE * 4)
    assert result != frozen_pid  # the second worker's run is the one recorded
    assert [pid for pid, _ in noted(e2e, "steps", "finished")] == [result]
    record = run.record()
    assert (record.state, record.attempts, record.deliveries) == ("complete", 1, 2)
