"""Faults nobody planned for, with real ``skunq work`` processes and real signals: a job
whose exception cannot be printed, a crash loop of poison jobs, a slow job claimed with
quick ones, Ctrl-C mid-drain, SIGTERM during restart backoff, and a pool that runs
delayed and cron jobs with no other process. Written black-box: the tests look only at
the store, the processes and their output.

They run on SQLite and Redis: the fault handling is the worker's and pool's, the same on
every store, and the contract suite proves the store verbs underneath on all of them.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from datetime import timedelta

import pytest

from skunkqueue.jobs import JobRecord
from skunkqueue.persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX

from .conftest import E2E, Proc, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("e2e", ["sqlite", "redis"], indirect=True)]

TASKS = """
import os
import time

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
MARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'marks')


def mark(key):
    # One line per execution; O_APPEND writes of a short line never interleave.
    fd = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (key + '\\n').encode())
    finally:
        os.close(fd)


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError('cannot print me')


@queue.event(routes=['foo'])
def unprintable():
    raise Unprintable()


@queue.event(routes=['foo'])
def ok(key):
    mark(key)
    return key


@queue.event(routes=['foo'], max_deliveries=2)
def poison(key):
    mark(key)
    os._exit(13)


@queue.event(routes=['foo'])
def slow(seconds):
    time.sleep(seconds)


@queue.event(routes=['foo'])
def stubborn(key):
    mark(key)
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            pass


@queue.event(routes=['tick'], cron='* * * * * */1')
def tick():
    return time.time()


@queue.event(routes=['foo'])
def started_at():
    return time.time()
"""


def tasks_of(e2e: E2E):  # type: ignore[no-untyped-def]
    e2e.write_module("fault_tasks", TASKS)
    return e2e.import_module("fault_tasks")


def marks(e2e: E2E) -> Counter[str]:
    path = e2e.dir / "marks"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def get(e2e: E2E, job_id: str) -> JobRecord:
    record = e2e.queue().backend.get(job_id, time.time())
    assert record is not None, job_id
    return record


def states(e2e: E2E, ids: list[str]) -> Counter[str]:
    backend = e2e.queue().backend
    now = time.time()
    return Counter(r.state if r else "missing" for r in (backend.get(i, now) for i in ids))


def keyed(event, count: int, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Fire ``count`` jobs whose id is also their argument, so executions count by id."""
    ids = [f"{prefix}-{n:04d}" for n in range(count)]
    for job_id in ids:
        event.send(args=(job_id,), job_id=job_id)
    return ids


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(p) for p in listing.read().split()]
    except FileNotFoundError:
        return []


def worker_pids(e2e: E2E) -> set[int]:
    backend = e2e.queue().backend
    return {lease.info["pid"] for lease in backend.leases(WORKER_LEASE_PREFIX, time.time())}


def test_an_exception_that_cannot_be_printed_fails_only_its_job(e2e: E2E) -> None:
    tasks = tasks_of(e2e)
    bad = tasks.unprintable.fire()
    good = keyed(tasks.ok, 20, "ok")
    worker = e2e.worker("foo", extra=("--import", "fault_tasks"))
    wait_until(lambda: states(e2e, good) == Counter(complete=20), 20, what="the other jobs done")
    wait_until(lambda: get(e2e, bad.id).state == "error", 10, what="the bad job in error")
    record = get(e2e, bad.id)
    assert record.error["type"] == "fault_tasks.Unprintable"
    assert "unprintable Unprintable" in record.error["message"]
    assert "Traceback" in record.error["traceback"]
    assert not e2e.queue().jobs(state="running")
    assert worker.popen.poll() is None


def test_a_crash_loop_of_poison_jobs_needs_no_scheduler(e2e: E2E) -> None:
    """30 jobs that each kill their worker: every one ends in error after max_deliveries
    (its crashes counted, its neighbours' not), and the other jobs complete, with no
    scheduler anywhere to recover leases."""
    e2e.expect(r"died with exit code 13 while running job poison-", r"handed back \d+ jobs")
    tasks = tasks_of(e2e)
    poison = keyed(tasks.poison, 30, "poison")
    good = keyed(tasks.ok, 20, "ok")
    worker = e2e.worker("foo", "foo", extra=("--import", "fault_tasks", "--lease", "60"))
    wait_until(
        lambda: (
            states(e2e, poison) == Counter(error=30) and states(e2e, good) == Counter(complete=20)
        ),
        90,
        what="every poison job in error and every other job complete",
    )
    runs = marks(e2e)
    for job_id in poison:
        record = get(e2e, job_id)
        assert record.error["reason"] == "lost deliveries", record.error
        assert (record.deliveries, record.attempts) == (2, 0)
        assert runs[job_id] == 2, (job_id, runs[job_id])
    assert all(runs[job_id] == 1 for job_id in good)
    assert not e2e.queue().backend.leases(SCHEDULER_LEASE, time.time())
    assert worker.popen.poll() is None
    assert "handed back" in worker.output()


def test_quick_jobs_do_not_wait_behind_a_slow_one(e2e: E2E) -> None:
    tasks = tasks_of(e2e)
    e2e.worker("foo", "foo", extra=("--import", "fault_tasks"))
    e2e.wait_for_workers(2)
    # A run of fast jobs first: batches are sized by past durations, so the next is large.
    warm = keyed(tasks.ok, 300, "warm")
    wait_until(lambda: states(e2e, warm) == Counter(complete=300), 30, what="the warm-up")
    now = time.time()
    slow = tasks.slow.build_jobs((4,), None, now, now, None, None)
    quick = [
        j for n in range(20) for j in tasks.ok.build_jobs((f"q{n}",), None, now, now, None, None)
    ]
    # One write, slow job first: whichever worker wakes claims them together.
    started = time.time()
    e2e.queue().backend.put(slow + quick, now)
    ids = [j.id for j in quick]
    wait_until(lambda: states(e2e, ids) == Counter(complete=20), 10, what="the quick jobs")
    done = time.time() - started
    finished = [get(e2e, i).finished_at for i in ids]
    assert max(finished) - started < 1.0, f"the quick jobs took {max(finished) - started:.2f} s"
    assert done < 4.0
    assert get(e2e, slow[0].id).state == "running"


def test_ctrl_c_mid_drain_loses_no_finished_outcome(e2e: E2E) -> None:
    tasks = tasks_of(e2e)
    ids = keyed(tasks.ok, 2000, "job")
    pool = e2e.worker("foo", "foo", extra=("--import", "fault_tasks"))
    wait_until(lambda: sum(marks(e2e).values()) >= 300, 30, what="the drain under way")
    os.killpg(pool.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    started = time.monotonic()
    pool.wait(timeout=15)
    assert time.monotonic() - started < 10
    assert not e2e.queue().jobs(state="running"), "outcomes were dropped: jobs left running"
    ran = marks(e2e)
    assert all(n == 1 for n in ran.values()), "a job ran twice before the stop"
    record_states = {i: get(e2e, i).state for i in ids}
    unfinished_but_run = [i for i in ran if record_states[i] != "complete"]
    # Only a job interrupted in the middle (one per worker at most) ran without completing.
    assert len(unfinished_but_run) <= 2, unfinished_but_run
    assert all(record_states[i] == "queued" for i in unfinished_but_run)
    complete_before = {i for i, s in record_states.items() if s == "complete"}

    e2e.worker("foo", extra=("--import", "fault_tasks"))
    wait_until(lambda: states(e2e, ids) == Counter(complete=2000), 60, what="the rest drained")
    ran = marks(e2e)
    assert all(ran[i] == 1 for i in complete_before), "a finished job ran again"
    assert all(ran[i] in (1, 2) for i in ids)
    assert sum(ran[i] == 2 for i in ids) <= 2


def test_sigterm_during_restart_backoff_stops_the_pool(e2e: E2E) -> None:
    e2e.expect(r"died with exit code -9; replacing it in")
    pool = e2e.worker("foo", extra=("--lease", "5"))
    e2e.wait_for_workers(1)
    killed: set[int] = set()
    for deaths in range(1, 5):
        child = wait_until(
            lambda: [p for p in children(pool.pid) if p not in killed], 20, what="a worker"
        )[0]
        wait_until(lambda: child in worker_pids(e2e), 20, what="the worker serving")  # noqa: B023
        os.kill(child, signal.SIGKILL)
        killed.add(child)
        pool.wait_for_output(f"replacing it in {0.5 * 2 ** (deaths - 1):.1f} s")
    # The fourth quick death: the pool now waits 4 s before starting another worker.
    assert not [p for p in children(pool.pid) if p not in killed]
    pool.signal(signal.SIGTERM)
    started = time.monotonic()
    assert pool.wait(timeout=10) == 0
    assert time.monotonic() - started < 3.0
    assert "stopped" in pool.output()
    assert not children(pool.pid)


def test_a_second_ctrl_c_kills_a_job_that_ignores_the_first(e2e: E2E) -> None:
    e2e.expect(r"did not stop in time; killing it", r"handed back 1 jobs of dead worker")
    tasks = tasks_of(e2e)
    job = tasks.stubborn.send(args=("stubborn",), job_id="stubborn")
    pool = e2e.worker("foo", extra=("--import", "fault_tasks"))
    wait_until(lambda: marks(e2e)["stubborn"] == 1, 20, what="the stubborn job running")
    os.killpg(pool.pid, signal.SIGINT)
    pool.wait_for_output("stopping (interrupt)")
    assert pool.popen.poll() is None  # the job swallowed its KeyboardInterrupt
    pool.signal(signal.SIGINT)
    assert pool.wait(timeout=5) == 0
    assert "did not stop in time; killing it" in pool.output()
    # Killed by the pool's own stop: handed back unrun, its delivery not counted.
    wait_until(lambda: get(e2e, job.id).state == "queued", 10, what="the job handed back")
    assert get(e2e, job.id).deliveries == 0


def test_a_plain_worker_runs_delayed_jobs_and_cron_ticks(e2e: E2E) -> None:
    tasks = tasks_of(e2e)
    pool = e2e.worker("foo", "tick", extra=("--import", "fault_tasks"), scheduler=True)
    delayed = tasks.started_at.fire_at(timedelta(seconds=1.5))
    eta = get(e2e, delayed.id).eta
    assert delayed.wait(timeout=20) >= eta
    backend = e2e.queue().backend
    wait_until(
        lambda: [
            j
            for j in backend.list_jobs(time.time(), state="complete")
            if j.schedule == "fault_tasks.tick"
        ],
        20,
        what="a cron tick run",
    )
    assert pool.popen.poll() is None
    assert len(e2e.procs) == 1  # nothing else ran


def test_status_warns_when_jobs_are_due_and_no_scheduler_leads(e2e: E2E) -> None:
    tasks = tasks_of(e2e)
    e2e.worker("foo", extra=("--import", "fault_tasks"))  # --no-scheduler
    due = tasks.started_at.fire_at(timedelta(seconds=0.2))
    eta = get(e2e, due.id).eta
    wait_until(lambda: time.time() > eta + 0.1, 5, what="the eta to pass")
    status = e2e.cli("status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"WARNING: no scheduler leads, and jobs have been due for", status.stdout)
    assert get(e2e, due.id).state == "scheduled"

    e2e.scheduler()
    assert due.wait(timeout=20) >= eta
    status = e2e.cli("status")
    assert "WARNING" not in status.stdout, status.stdout


def test_status_is_quiet_with_a_pool_running(e2e: E2E) -> None:
    proc: Proc = e2e.worker("foo", scheduler=True)
    backend = e2e.queue().backend
    wait_until(lambda: backend.leases(SCHEDULER_LEASE, time.time()), 20, what="a leader")
    status = e2e.cli("status")
    assert "WARNING" not in status.stdout and "leader: " in status.stdout
    assert f"pid {proc.pid}" in status.stdout  # the pool's supervisor leads
