"""A real ``Worker``, ``WorkerPool`` and ``Scheduler`` driven through a store that fails:
every verb they send raises before it reaches the store or after it took effect, on
memory and SQLite (and Redis for dropped connections). Whatever fails, every job ends
in a final state, no job runs more often than it was delivered, and nothing stays
``running`` once its worker is gone.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from skunkqueue import Retry, SkunkQueue
from skunkqueue.jobs import JobRecord
from skunkqueue.scheduler import Scheduler, service
from skunkqueue.worker import WorkerPool, runner
from skunkqueue.worker.runner import Worker

from .faults import Fault, inject
from .waiting import wait_until

WAIT = 20.0
LEASE = 1.0  # short, so a claim whose reply was lost is recovered within the test


@pytest.fixture(autouse=True)
def prompt_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "IDLE_WAIT", 0.05)
    monkeypatch.setattr(runner, "BACKOFF_MAX", 0.2)
    monkeypatch.setattr(service, "MAX_SLEEP", 0.05)
    monkeypatch.setattr(service, "BACKOFF_MAX", 0.2)


@pytest.fixture
def queue(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkunkQueue]:
    monkeypatch.chdir(tmp_path)
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, lease=LEASE, heartbeat=0.1, leader_ttl=1.5)
    yield q
    q.close()


class Executions:
    """How often each job's function body ran (thread-safe)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def ran(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


@contextmanager
def running(target: Any, name: str) -> Iterator[Any]:
    thread = threading.Thread(target=target.run, name=name, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), f"{name} did not stop"


def worker(queue: SkunkQueue, routes: tuple[str, ...] = ("foo",)) -> Worker:
    return Worker(queue.config, routes)


def scheduler(queue: SkunkQueue) -> Scheduler:
    return Scheduler(queue.name, **{k: v for k, v in vars(queue.config).items() if k != "name"})


def records(queue: SkunkQueue, ids: list[str]) -> list[JobRecord]:
    found = [queue.backend.get(job_id, time.time()) for job_id in ids]
    assert all(r is not None for r in found)
    return found  # type: ignore[return-value]


def all_final(queue: SkunkQueue, ids: list[str]) -> bool:
    return all(r.state in ("complete", "error") for r in records(queue, ids))


def check_invariants(queue: SkunkQueue, ids: list[str], executions: Executions) -> None:
    for record in records(queue, ids):
        assert record.state in ("complete", "error"), record
        assert record.owner is None and record.lease_until is None, record
        assert record.deliveries >= executions.counts[record.id], record
        assert record.attempts == executions.counts[record.id] or record.state == "error", record


def define(queue: SkunkQueue, executions: Executions, pause: float = 0.0) -> tuple[Any, Any]:
    """``ok(key)`` runs once per delivery; ``flaky(key)`` fails its first execution. Each
    takes ``pause`` seconds, so leases are renewed while jobs are held."""

    @queue.event(routes=["foo"])
    def ok(key: str) -> str:
        executions.ran(key)
        time.sleep(pause)  # pause: a job body that takes time
        return key

    @queue.event(routes=["foo"], retry=Retry(max_attempts=3, delay=0, jitter=0))
    def flaky(key: str) -> str:
        executions.ran(key)
        time.sleep(pause)  # pause: a job body that takes time
        if executions.counts[key] == 1:
            raise ValueError("first try fails")
        return key

    return ok, flaky


def fire_keyed(event: Any, count: int) -> list[str]:
    """Fire ``count`` jobs whose argument is their own id, so executions count by id."""
    ids = []
    for _ in range(count):
        job_id = uuid.uuid4().hex
        event.send(args=(job_id,), job_id=job_id)
        ids.append(job_id)
    return ids


# -- one verb at a time, before and after the store did its work -------------------------

WORKER_VERBS = ["claim", "finish", "renew", "wait", "acquire_lease", "release_lease"]
SCHEDULER_VERBS = ["sweep", "schedules", "leases", "forget_leases", "stats"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("verb", WORKER_VERBS + SCHEDULER_VERBS)
def test_every_job_reaches_an_outcome_whatever_verb_fails(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch, verb: str, when: str
) -> None:
    executions = Executions()
    ok, flaky = define(queue, executions, pause=0.02)
    ids = fire_keyed(ok, 8) + fire_keyed(flaky, 4)
    with inject(monkeypatch, Fault(verb, when, nth=1, times=2)) as plan:
        with running(scheduler(queue), "scheduler"), running(worker(queue), "worker"):
            wait_until(lambda: all_final(queue, ids), WAIT, what="every job final")
            more = fire_keyed(ok, 2)  # the worker still serves after the faults
            wait_until(lambda: all_final(queue, more), WAIT, what="jobs fired afterwards")
    assert plan.fired, f"no {verb} call was made, so nothing was tested"
    check_invariants(queue, ids + more, executions)
    assert all(r.state == "complete" for r in records(queue, ids + more))


@pytest.mark.parametrize("seed", [1, 2])
def test_random_faults_on_every_verb(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    executions = Executions()
    ok, flaky = define(queue, executions, pause=0.005)
    ids = fire_keyed(ok, 40) + fire_keyed(flaky, 10)
    faults = [
        Fault(verb, when, probability=0.1, seed=seed * 100 + i)
        for i, (verb, when) in enumerate(
            (v, w) for v in WORKER_VERBS + SCHEDULER_VERBS for w in ("before", "after")
        )
    ]
    with inject(monkeypatch, *faults) as plan:
        with running(scheduler(queue), "scheduler"), running(worker(queue), "worker"):
            wait_until(lambda: all_final(queue, ids), WAIT * 2, what="every job final")
    assert len({verb for verb, _, _ in plan.fired}) >= 3, plan.fired
    check_invariants(queue, ids, executions)


# -- failures that used to strand a batch (no scheduler runs: nothing else would save it) --


def test_a_failed_write_mid_batch_strands_nothing(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions = Executions()

    @queue.event(routes=["foo"])
    def nap(key: str) -> None:
        executions.ran(key)
        time.sleep(0.03)  # pause: two of these pass FLUSH_AFTER, so outcomes are written mid-batch

    for _ in range(40):  # a run of fast jobs makes the next batch large
        nap.fire("warm-up")
    with running(worker(queue), "worker"):
        wait_until(lambda: not queue.jobs(state="queued"), WAIT, what="warm-up drained")
    ids = fire_keyed(nap, 10)
    with inject(monkeypatch, Fault("finish", "before", nth=1, times=3)) as plan:
        with running(worker(queue), "worker"):
            wait_until(lambda: all_final(queue, ids), WAIT, what="every job final")
    assert plan.fired
    check_invariants(queue, ids, executions)


def test_an_interrupt_during_a_write_keeps_the_outcomes(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt (Ctrl-C) landing inside the outcome write: the worker stops,
    and the outcomes it had computed are still written on its way out."""
    executions = Executions()
    ok, _ = define(queue, executions)
    ids = fire_keyed(ok, 20)
    with inject(monkeypatch, Fault("finish", "before", error=KeyboardInterrupt, nth=1)) as plan:
        w = worker(queue)
        thread = threading.Thread(target=w.run, daemon=True)
        thread.start()
        thread.join(WAIT)  # the interrupt ends the worker on its own
        assert not thread.is_alive()
    assert plan.fired
    ran = [r for r in records(queue, ids) if executions.counts[r.id]]
    assert ran, "the worker ran nothing before the interrupt"
    assert all(r.state == "complete" for r in ran), [r.state for r in ran]
    assert not queue.jobs(state="running")
    assert all(executions.counts[r.id] == 1 for r in ran)


def test_an_outcome_the_store_refuses_for_good_becomes_an_error(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions = Executions()
    ok, _ = define(queue, executions)
    ids = fire_keyed(ok, 5)
    poison = ids[2]

    class Refused(ValueError):
        pass

    real_open = runner.open_backend

    def open_refusing(url: str, name: str, **options: Any) -> Any:
        backend = real_open(url, name, **options)
        finish = backend.finish

        def refuse(outcomes: Any, owner: str, now: float) -> Any:
            if any(o.job_id == poison and o.state == "complete" for o in outcomes):
                raise Refused("document too large")
            return finish(outcomes, owner, now)

        backend.finish = refuse
        return backend

    monkeypatch.setattr(runner, "open_backend", open_refusing)
    with running(worker(queue), "worker"):
        wait_until(lambda: all_final(queue, ids), WAIT, what="every job final")
    states = {r.id: r for r in records(queue, ids)}
    assert states[poison].state == "error"
    assert states[poison].error["type"].endswith("Refused")
    assert "refused" in states[poison].error["reason"]
    assert all(states[i].state == "complete" for i in ids if i != poison)


def test_an_exception_that_cannot_be_printed(queue: SkunkQueue) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    @queue.event(routes=["foo"])
    def boom() -> None:
        raise Unprintable()

    executions = Executions()
    ok, _ = define(queue, executions)
    bad = boom.fire()
    ids = fire_keyed(ok, 10)
    with running(worker(queue), "worker"):
        wait_until(lambda: all_final(queue, ids + [bad.id]), WAIT, what="every job final")
    record = queue.backend.get(bad.id, time.time())
    assert record is not None and record.state == "error"
    assert "unprintable Unprintable" in record.error["message"]
    assert record.error["type"].endswith("Unprintable")
    assert all(r.state == "complete" for r in records(queue, ids))


def test_a_retry_policy_past_a_thousand_attempts(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"], retry=Retry(max_attempts=10**6, delay=1, max_delay=60))
    def always_fails() -> None:
        raise ValueError("again")

    # A record that has failed 2,000 times already: 2.0 ** 2000 overflows a float.
    template = always_fails.build_jobs((), None, time.time(), time.time(), None, None)[0]
    record = JobRecord(**{**template.to_dict(), "attempts": 2000})
    queue.backend.put([record], time.time())
    with running(worker(queue), "worker"):
        wait_until(
            lambda: queue.backend.get(record.id, time.time()).state == "retrying",  # type: ignore[union-attr]
            WAIT,
            what="the job retrying",
        )
    stored = queue.backend.get(record.id, time.time())
    assert stored is not None and stored.attempts == 2001
    assert time.time() < stored.eta <= time.time() + 60


def test_the_heartbeat_survives_a_store_it_cannot_reach_at_first(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat opens its own connection; a store down at that moment (a worker
    started during a Redis restart) used to end the thread, so leases lapsed and a long
    job ran twice."""
    real_open = runner.open_backend
    refused: list[str] = []

    def down_for_the_heartbeat(url: str, name: str, **options: Any) -> Any:
        if threading.current_thread().name.startswith("heartbeat") and not refused:
            refused.append(name)
            raise ConnectionError("store unreachable")
        return real_open(url, name, **options)

    monkeypatch.setattr(runner, "open_backend", down_for_the_heartbeat)
    executions = Executions()

    @queue.event(routes=["foo"])
    def long_job(key: str) -> None:
        executions.ran(key)
        time.sleep(LEASE * 3)  # pause: a job body that outlives three lease periods

    (job_id,) = fire_keyed(long_job, 1)
    with running(scheduler(queue), "scheduler"), running(worker(queue), "worker"):
        wait_until(lambda: all_final(queue, [job_id]), WAIT, what="the long job done")
    assert len(refused) == 1
    (record,) = records(queue, [job_id])
    assert record.state == "complete" and record.deliveries == 1
    assert executions.counts[job_id] == 1


# -- a pool whose store fails while it hands back a dead worker's jobs ----------------------


# A memory:// pool runs threads, which cannot die on their own: SQLite only.
@pytest.mark.parametrize("url", ["sqlite"], indirect=True)
def test_pool_survives_a_store_error_during_hand_back(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    queue = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, lease=LEASE, heartbeat=0.1)
    marks = tmp_path / "marks"

    @queue.event(routes=["foo"], max_deliveries=2)
    def crash() -> None:
        with open(marks, "a") as out:
            out.write("crash\n")
        os._exit(9)

    @queue.event(routes=["foo"])
    def fine() -> str:
        return "ok"

    poison = crash.fire()
    good = [fine.fire() for _ in range(5)]
    with inject(monkeypatch, Fault("release", "before", nth=1, times=2)) as plan:
        pool = WorkerPool(queue.name, ["foo"], url=url, lease=LEASE, heartbeat=0.1)
        thread = threading.Thread(target=lambda: (pool.start(), pool._supervise()), daemon=True)
        thread.start()
        try:
            wait_until(lambda: poison.state == "error", WAIT, what="the poison job in error")
            wait_until(lambda: all(h.state == "complete" for h in good), WAIT, what="good jobs")
        finally:
            pool.stop()
            thread.join(WAIT)
    assert not thread.is_alive(), "the pool did not stop"
    assert plan.fired, "the hand-back never failed, so nothing was tested"
    record = poison.record()
    assert record is not None and record.error["reason"] == "lost deliveries"
    assert marks.read_text().count("crash") == 2
    queue.close()


@pytest.mark.parametrize("url", ["sqlite"], indirect=True)
def test_a_pool_under_random_faults_in_its_workers_and_scheduler(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers inherit the fault plan (each process counts its own calls); the
    supervisor's scheduler thread and hand-backs go through it too."""
    monkeypatch.chdir(tmp_path)
    queue = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, lease=LEASE, heartbeat=0.1)
    marks = tmp_path / "marks"

    # A claim whose reply a fault swallows costs its jobs a delivery (the leader cannot tell
    # it never ran): at these odds a job can lose max_deliveries=3 of them and rightly end
    # in error. What this test checks is that no job is lost or run unseen, so it allows
    # more lost deliveries than the faults can take.
    @queue.event(routes=["foo"], retry=Retry(max_attempts=3, delay=0, jitter=0), max_deliveries=20)
    def work(key: str) -> str:
        with open(marks, "a") as out:  # one line per execution, from any process
            out.write(key + "\n")
        return key

    ids = fire_keyed(work, 60)
    verbs = ["claim", "finish", "renew", "wait", "sweep", "acquire_lease", "release"]
    faults = [
        Fault(verb, when, probability=0.25, seed=i)
        for i, (verb, when) in enumerate((v, w) for v in verbs for w in ("before", "after"))
    ]
    fired = tmp_path / "fired"
    with inject(monkeypatch, *faults, record_to=fired):
        pool = WorkerPool(queue.name, ["foo", "foo"], url=url, lease=LEASE, heartbeat=0.1)
        thread = threading.Thread(target=lambda: (pool.start(), pool._supervise()), daemon=True)
        thread.start()
        try:
            wait_until(lambda: all_final(queue, ids), WAIT * 2, what="every job final")
        finally:
            pool.stop()
            thread.join(WAIT)
    assert not thread.is_alive(), "the pool did not stop"
    pids = {line.split()[0] for line in fired.read_text().splitlines()}
    assert len(pids - {str(os.getpid())}) >= 1, "no fault fired in a worker process"
    runs = Counter(marks.read_text().split())
    for record in records(queue, ids):
        assert record.state == "complete", record
        assert record.deliveries >= runs[record.id] >= 1, (record, runs[record.id])
    assert not queue.jobs(state="running")
    queue.close()


# -- Redis: connections dropped under the worker and scheduler ----------------------------


@pytest.fixture
def redis_queue(redis_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.chdir(tmp_path)
    q = SkunkQueue(
        f"q{uuid.uuid4().hex[:10]}",
        url=redis_server.url,
        lease=LEASE,
        heartbeat=0.1,
        leader_ttl=1.5,
    )
    yield q
    q.close()


def kill_other_clients(redis_server: Any) -> int:
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    try:
        return int(admin.client_kill_filter(_type="normal", skipme=True))
    finally:
        admin.close()


def final_despite_drops(queue: SkunkQueue, ids: list[str]) -> bool:
    try:
        return all_final(queue, ids)
    except ConnectionError:  # the test's own connection was dropped too
        return False


def test_redis_connections_dropped_under_worker_and_scheduler(
    redis_queue: SkunkQueue, redis_server: Any
) -> None:
    executions = Executions()
    ok, flaky = define(redis_queue, executions)
    ids = fire_keyed(ok, 150) + fire_keyed(flaky, 30)
    kills = 0
    with running(scheduler(redis_queue), "scheduler"), running(worker(redis_queue), "worker"):
        deadline = time.monotonic() + WAIT * 2
        while not final_despite_drops(redis_queue, ids) and time.monotonic() < deadline:
            kills += kill_other_clients(redis_server)
            time.sleep(0.05)  # pause: pacing of the connection killer (its loop has a deadline)
    assert kills > 0
    check_invariants(redis_queue, ids, executions)
