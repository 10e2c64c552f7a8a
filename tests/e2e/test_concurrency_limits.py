"""``concurrency=n`` with real ``skunq work`` processes: never more than n jobs of the
event run at once across every worker, and a worker SIGKILLed while it holds one gives
its slot back once its lease lapses. Black-box: the jobs report when they ran, by the
store's clock, and the test reads the store."""

from __future__ import annotations

import json

import pytest

from .conftest import E2E, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("e2e", ["sqlite", "redis", "fdbsim+tcp"], indirect=True),
]

TASKS = """
import os
import time

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
HERE = os.path.dirname(os.path.abspath(__file__))


@queue.event(routes=['api'], concurrency=2)
def call_partner(n):
    # A start no earlier than it was and an end no later, by the store's clock: two
    # intervals that overlap here overlapped in fact.
    start = queue.backend.latest()
    time.sleep(0.15)
    return [start, queue.backend.now()]


@queue.event(routes=['api'], concurrency=1)
def one_at_a_time(n):
    first_delivery = os.path.join(HERE, 'first-delivery')
    if n == 0 and not os.path.exists(first_delivery):
        open(first_delivery, 'w').close()
        time.sleep(120)  # until its worker is killed
    start = queue.backend.latest()
    time.sleep(0.05)
    return [start, queue.backend.now()]
"""


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold one instant in common."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching is no overlap
        running += step
        most = max(most, running)
    return most


def results(e2e: E2E, ids: list[str]) -> list[tuple[float, float]] | None:
    """Each job's reported (start, end), or None while any has not completed."""
    backend = e2e.queue().backend
    now = backend.now()
    records = [backend.get(i, now) for i in ids]
    if not all(r is not None and r.state == "complete" for r in records):
        return None
    return [tuple(json.loads(r.result)) for r in records]  # type: ignore[union-attr,arg-type,misc]


def test_never_more_than_the_limit_run_at_once_across_four_workers(e2e: E2E) -> None:
    e2e.write_module("gated_tasks", TASKS)
    tasks = e2e.import_module("gated_tasks")
    ids = [tasks.call_partner.send(args=(n,), job_id=f"call-{n:02d}").id for n in range(20)]
    e2e.worker("api", "api", "api", "api", extra=("--import", "gated_tasks"))
    wait_until(lambda: results(e2e, ids) is not None, 30, what="all 20 jobs complete")
    intervals = results(e2e, ids)
    assert intervals is not None
    assert most_at_once(intervals) <= 2, sorted(intervals)
    # The store's view agrees: the records' own times (claim to finish) never overlap
    # more than twice either.
    backend = e2e.queue().backend
    records = [backend.get(i, backend.now()) for i in ids]
    assert most_at_once([(r.started_at, r.finished_at) for r in records]) <= 2
    assert all(r.attempts == 1 for r in records)


def test_a_killed_workers_slot_comes_back_when_its_lease_lapses(e2e: E2E) -> None:
    e2e.write_module("gated_tasks", TASKS)
    tasks = e2e.import_module("gated_tasks")
    ids = [tasks.one_at_a_time.send(args=(n,), job_id=f"one-{n}").id for n in range(6)]
    doomed = e2e.worker("api", extra=("--import", "gated_tasks", "--lease", "1.5"))
    wait_until((e2e.dir / "first-delivery").exists, 15, what="the first job running")
    # Another worker and a scheduler are up while the first job holds the only slot:
    # the jobs behind it must wait, though a worker is idle.
    e2e.scheduler("--leader-ttl", "2")
    e2e.worker("api", extra=("--import", "gated_tasks", "--lease", "1.5"))
    e2e.wait_for_workers(2)
    doomed.kill_group()  # pool and worker at once: nobody hands the job back
    wait_until(lambda: results(e2e, ids) is not None, 30, what="all 6 jobs complete")
    backend = e2e.queue().backend
    first = backend.get("one-0", backend.now())
    assert first.deliveries == 2  # the killed delivery was lost, the second one ran
    intervals = results(e2e, ids)
    assert intervals is not None and most_at_once(intervals) == 1
    # The slot stayed taken until the lease lapsed and the job was recovered: no job
    # behind it ran in the meantime, and the recovered job, first in order, ran first.
    assert min(range(6), key=lambda n: intervals[n][0]) == 0
