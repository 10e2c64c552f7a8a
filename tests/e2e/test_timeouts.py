"""Timeouts and crashing jobs: the job fails as the policy says, the worker pool keeps serving."""

from __future__ import annotations

import os
import re
import time

import pytest

from skunkqueue.errors import JobFailed
from skunkqueue.persistence.base import SCHEDULER_LEASE

from .conftest import E2E, Proc, wait_until

TASKS = """
import os
import signal
import time
from pathlib import Path

from skunkqueue import Retry, SkunkQueue
from skunkqueue.errors import JobTimeout

queue = SkunkQueue('{queue}', url='{url}')
HERE = Path(__file__).parent


def note(name):
    \"\"\"Record this execution (pid, start time); return how many executions there were.\"\"\"
    path = HERE / f'{name}.runs'
    with open(path, 'a') as runs:
        runs.write(f'{os.getpid()} {time.time()!r}\\n')
    return len(path.read_text().splitlines())


@queue.event(routes=['foo'])
def pid():
    return os.getpid()


@queue.event(routes=['foo'], timeout=1)
def sleepy(name):
    note(name)
    time.sleep(10)
    return 'woke up'


@queue.event(routes=['foo'], timeout=1, retry=Retry(max_attempts=3, delay=0.1, jitter=0, on=(JobTimeout,)))
def sleepy_once(name):
    if note(name) == 1:
        time.sleep(10)
    return 'second time lucky'


@queue.event(routes=['foo'], timeout=1)
def stubborn(name):
    note(name)
    while True:
        try:
            time.sleep(0.1)
        except BaseException:
            pass


@queue.event(routes=['foo'], max_deliveries=2)
def exits(name):
    note(name)
    os._exit(3)


@queue.event(routes=['foo'], max_deliveries=2)
def kills_itself(name):
    note(name)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def start_pool(e2e: E2E, *routes: str, lease: str = "2") -> Proc:
    worker = e2e.worker(*routes, extra=("--lease", lease), scheduler=True)
    e2e.wait_for_workers(len(routes))
    backend = e2e.queue().backend
    wait_until(lambda: backend.leases(SCHEDULER_LEASE, time.time()), what="a leading scheduler")
    e2e.write_module("timeout_tasks", TASKS)
    return worker


def runs_of(e2e: E2E, name: str) -> list[tuple[int, float]]:
    path = e2e.dir / f"{name}.runs"
    if not path.exists():
        return []
    return [(int(p), float(t)) for p, t in (line.split() for line in path.read_text().splitlines())]


def exit_codes(worker: Proc) -> list[int]:
    return [
        int(code)
        for code in re.findall(
            r"died with exit code (-?\d+)(?: while running job \S+)?; replacing it", worker.output()
        )
    ]


def test_timeout_stops_the_job_and_the_worker_keeps_serving(e2e: E2E) -> None:
    worker = start_pool(e2e, "foo")
    tasks = e2e.import_module("timeout_tasks")

    run = tasks.sleepy.fire("sleepy")
    with pytest.raises(JobFailed):
        run.wait(timeout=8)  # well before the job's 10 s sleep would end
    record = run.record()
    assert record is not None
    assert (record.state, record.attempts) == ("error", 1)
    assert record.error["type"].endswith("JobTimeout"), record.error
    assert "timeout of 1" in record.error["message"]
    assert record.finished_at - record.started_at < 3.0

    ((runner_pid, _),) = runs_of(e2e, "sleepy")
    assert tasks.pid.fire().wait(timeout=10) == runner_pid  # the same worker process goes on
    assert exit_codes(worker) == []


def test_timeout_counts_as_a_failure_for_retry(e2e: E2E) -> None:
    start_pool(e2e, "foo")
    tasks = e2e.import_module("timeout_tasks")

    run = tasks.sleepy_once.fire("once")
    assert run.wait(timeout=10) == "second time lucky"
    assert run.attempts == 2
    (pid1, t1), (pid2, t2) = runs_of(e2e, "once")
    assert pid1 == pid2
    assert 1.0 <= t2 - t1 < 6.0


def test_job_ignoring_its_timeout_gets_its_process_replaced(e2e: E2E) -> None:
    e2e.expect(r"stubborn ignored its timeout", r"died with exit code 75", r"handed back 1 jobs")
    worker = start_pool(e2e, "foo")
    tasks = e2e.import_module("timeout_tasks")

    run = tasks.stubborn.fire("stubborn")
    with pytest.raises(JobFailed):
        run.wait(timeout=12)
    record = run.record()
    assert record is not None
    assert (record.state, record.attempts) == ("error", 1)
    assert record.error["type"].endswith("JobTimeout"), record.error
    assert "killed" in record.error["message"]

    ((stubborn_pid, _),) = runs_of(e2e, "stubborn")
    wait_until(lambda: exit_codes(worker) == [75], what="the supervisor to report exit code 75")
    wait_until(
        lambda: not os.path.exists(f"/proc/{stubborn_pid}"), what="the stubborn worker to be gone"
    )
    new_pid = tasks.pid.fire().wait(timeout=15)
    assert new_pid != stubborn_pid
    assert len(runs_of(e2e, "stubborn")) == 1  # not run again
    assert worker.popen.poll() is None


@pytest.mark.parametrize("event", ["exits", "kills_itself"])
def test_job_crashing_its_executor_is_redelivered_then_fails(e2e: E2E, event: str) -> None:
    e2e.expect(r"died with exit code (3|-9) while running job", r"handed back 1 jobs")
    # A long lease: the supervisor expires a dead child's leases at once, without waiting.
    worker = start_pool(e2e, "foo", lease="15")
    tasks = e2e.import_module("timeout_tasks")

    run = getattr(tasks, event).fire(event)
    with pytest.raises(JobFailed):
        run.wait(timeout=20)
    record = run.record()
    assert record is not None
    assert record.state == "error"
    assert record.error["reason"] == "lost deliveries", record.error
    assert (record.deliveries, record.attempts) == (2, 0)

    runs = runs_of(e2e, event)
    assert len(runs) == 2, runs
    assert runs[0][0] != runs[1][0], "the second delivery should run in a replacement process"
    assert runs[1][1] - runs[0][1] < 8, "redelivery waited for the lease to lapse"
    expected = 3 if event == "exits" else -9
    wait_until(
        lambda: exit_codes(worker) == [expected, expected], what=f"two exits with code {expected}"
    )
    survivor = tasks.pid.fire().wait(timeout=15)
    assert survivor not in {pid for pid, _ in runs}
    assert worker.popen.poll() is None
    assert len(runs_of(e2e, event)) == 2
