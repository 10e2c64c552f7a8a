"""A real ``Worker`` (and ``Scheduler``) in threads of the test process, on memory and SQLite.

Threads share the process's event registry, so events defined in a test are what the
worker runs. Soft and hard timeouts need a worker process's main thread and are covered
by the end-to-end tests; everything else about running jobs is exercised here.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from skunkqueue import JobFailed, Retry, SerializationError, SkunkQueue
from skunkqueue.jobs import JobRecord
from skunkqueue.persistence.base import WORKER_LEASE_PREFIX
from skunkqueue.scheduler import Scheduler, service
from skunkqueue.scheduler.ticks import tick_job_id
from skunkqueue.serialization import encode
from skunkqueue.worker import runner

from .threads import scheduler_thread, worker_thread
from .waiting import wait_until

WAIT = 10.0  # generous deadline for anything a worker or scheduler does


@pytest.fixture(autouse=True)
def prompt_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle workers and schedulers look at their stop flag every 50 ms instead of 0.5-1 s."""
    monkeypatch.setattr(runner, "IDLE_WAIT", 0.05)
    monkeypatch.setattr(service, "MAX_SLEEP", 0.05)


@pytest.fixture
def queue(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkunkQueue]:
    # The worker may import a job's module from its working directory: make that an empty one.
    monkeypatch.chdir(tmp_path)
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url)
    yield q
    q.close()


def put_raw(queue: SkunkQueue, event: str, payload: str, serializer: str = "json") -> str:
    """Store a record as any process with access to the backend could, bypassing events."""
    job_id = uuid.uuid4().hex
    now = time.time()
    record = JobRecord(
        id=job_id, event=event, route="foo", payload=payload, serializer=serializer, eta=now
    )
    assert queue.backend.put([record], now) == [True]
    return job_id


# -- running jobs ----------------------------------------------------------------------


def test_success_stores_result(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"])
    def add(first: int, second: int) -> dict[str, Any]:
        return {"sum": first + second, "args": [first, second]}

    with worker_thread(queue):
        run = add.fire(4, second=5)
        assert run.wait(timeout=WAIT) == {"sum": 9, "args": [4, 5]}
    record = queue.backend.get(run.id, time.time())
    assert record is not None
    assert record.state == "complete" and record.attempts == 1 and record.deliveries == 1
    assert record.owner is None and record.lease_until is None and record.error is None
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    assert record.expires_at == record.finished_at + queue.config.result_ttl
    assert add.result == {"sum": 9, "args": [4, 5]} and add.state == "complete"


def test_worker_serves_only_its_routes(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo", "bar"])
    def echo(x: int) -> int:
        return x

    on_foo = echo.fire(1)  # first route: foo, and older than the job on bar
    with worker_thread(queue, routes=("bar",)):
        on_bar = echo.send(args=(2,), route="bar")
        # Jobs leave oldest first: a worker that took foo as well would have taken on_foo
        # in the claim that took on_bar, or before it.
        assert on_bar.wait(timeout=WAIT) == 2
        assert on_foo.state == "queued"


def test_many_jobs_each_run_once(queue: SkunkQueue) -> None:
    seen: list[int] = []

    @queue.event(routes=["foo"])
    def note(i: int) -> int:
        seen.append(i)
        return i * i

    handles = note.fire_many([(i,) for i in range(200)])
    with worker_thread(queue), worker_thread(queue):
        results = [h.wait(timeout=WAIT) for h in handles]
    assert results == [i * i for i in range(200)]
    assert sorted(seen) == list(range(200))
    assert {h.attempts for h in handles} == {1}


def test_unknown_event_ends_in_error_without_importing(queue: SkunkQueue, tmp_path: Path) -> None:
    victim = tmp_path / "keep-me.txt"
    victim.write_text("still here")

    @queue.event(routes=["foo"])
    def known() -> str:
        return "ok"

    # Registered on another queue only: not an event of this queue.
    other = SkunkQueue(f"other{uuid.uuid4().hex[:6]}", url=queue.config.url)

    @other.event(routes=["foo"])
    def elsewhere() -> str:
        return "wrong queue"

    forged = put_raw(queue, "os.remove", json.dumps([[str(victim)], {}]))
    missing = put_raw(queue, "no_such_module.task", "[[],{}]")
    wrong_queue = put_raw(queue, elsewhere.name, "[[],{}]")
    with worker_thread(queue):
        ok = known.fire()
        assert ok.wait(timeout=WAIT) == "ok"  # the worker keeps serving
        for job_id, name in (
            (forged, "os.remove"),
            (missing, "no_such_module.task"),
            (wrong_queue, elsewhere.name),
        ):
            handle = queue.get(job_id)
            assert handle is not None
            with pytest.raises(JobFailed) as failed:
                handle.wait(timeout=WAIT)
            assert failed.value.error["reason"] == "unknown event"
            assert failed.value.error["type"] == "UnknownEvent"
            assert repr(name) in failed.value.error["message"]
            assert queue.name in failed.value.error["message"]
            assert handle.attempts == 1
    assert victim.read_text() == "still here"
    other.close()


class Tripwire:
    """Unpickling this creates a file: proof of whether a payload was ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_serializer_mismatch_is_refused(queue: SkunkQueue, tmp_path: Path) -> None:
    calls: list[Any] = []

    @queue.event(routes=["foo"])
    def json_only(*args: Any) -> None:
        calls.append(args)

    @queue.event(routes=["foo"], serializer="pickle")
    def pickled(*args: Any) -> None:
        calls.append(args)

    tripwire = tmp_path / "unpickled"
    smuggled = put_raw(
        queue, json_only.name, encode("pickle", [[Tripwire(tripwire)], {}], "x"), "pickle"
    )
    plain = put_raw(queue, pickled.name, "[[1],{}]", "json")
    with worker_thread(queue):
        for job_id, accepts in ((smuggled, "json"), (plain, "pickle")):
            handle = queue.get(job_id)
            assert handle is not None
            with pytest.raises(JobFailed) as failed:
                handle.wait(timeout=WAIT)
            assert failed.value.error["reason"] == "serializer mismatch"
            assert f"accepts {accepts!r}" in failed.value.error["message"]
    assert calls == []
    assert not tripwire.exists()


def test_bad_payload_ends_in_error(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"])
    def add(first: int, second: int) -> int:
        return first + second

    garbled = put_raw(queue, add.name, "not json")
    with worker_thread(queue):
        handle = queue.get(garbled)
        assert handle is not None
        with pytest.raises(JobFailed) as failed:
            handle.wait(timeout=WAIT)
    assert failed.value.error["reason"] == "bad payload"


def test_unserializable_result_is_an_error(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"])
    def returns_set() -> set[int]:
        return {1, 2}

    with worker_thread(queue), pytest.raises(JobFailed) as failed:
        returns_set.fire().wait(timeout=WAIT)
    assert failed.value.error["type"] == "skunkqueue.errors.SerializationError"
    assert "pickle" in failed.value.error["message"]


# -- pickle opt-in ---------------------------------------------------------------------


@pytest.mark.parametrize("opt_in", ["queue", "event"])
def test_pickle_opt_in_round_trips(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"q{uuid.uuid4().hex[:10]}"
    queue = SkunkQueue(name, url=url, **({"serializer": "pickle"} if opt_in == "queue" else {}))
    when = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)

    @queue.event(routes=["foo"], **({"serializer": "pickle"} if opt_in == "event" else {}))
    def shift(values: set[int], at: datetime) -> tuple[frozenset[int], datetime]:
        return frozenset(v + 1 for v in values), at + timedelta(days=1)

    with worker_thread(queue):
        run = shift.fire({1, 2}, at=when)
        assert run.wait(timeout=WAIT) == (frozenset({2, 3}), when + timedelta(days=1))
    record = queue.backend.get(run.id, time.time())
    assert record is not None and record.serializer == "pickle"

    # A queue object that never opted in refuses to unpickle what it reads.
    plain = SkunkQueue(name, url=url)
    handle = plain.get(run.id)
    assert handle is not None and handle.state == "complete"
    with pytest.raises(SerializationError, match="pickled result.*opted in to pickle"):
        _ = handle.result
    with pytest.raises(SerializationError, match="pickled result"):
        handle.wait(timeout=1)
    plain.close()
    queue.close()


# -- retries ---------------------------------------------------------------------------


def test_retry_then_success(queue: SkunkQueue) -> None:
    calls: list[float] = []

    @queue.event(
        routes=["foo"], retry=Retry(max_attempts=4, delay=0.05, backoff=2, jitter=0, on=(OSError,))
    )
    def flaky() -> str:
        calls.append(time.time())
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "third time lucky"

    with scheduler_thread(queue), worker_thread(queue):
        run = flaky.fire()
        assert run.wait(timeout=WAIT) == "third time lucky"
    assert run.attempts == 3 and run.state == "complete"
    assert queue.backend.get(run.id, time.time()).deliveries == 3  # type: ignore[union-attr]
    # Each retry waited at least its backoff delay: 0.05 s, then 0.1 s.
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1
    assert run.error is None  # success clears the error of the last failed attempt


def test_retry_exhausted_and_unlisted_exception(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"], retry=Retry(max_attempts=2, delay=0.01, jitter=0, on=(OSError,)))
    def always_fails(kind: str) -> None:
        raise (OSError if kind == "io" else KeyError)(f"boom {kind}")

    with scheduler_thread(queue), worker_thread(queue):
        exhausted = always_fails.fire("io")
        unlisted = always_fails.fire("key")
        with pytest.raises(JobFailed) as io_failed:
            exhausted.wait(timeout=WAIT)
        with pytest.raises(JobFailed) as key_failed:
            unlisted.wait(timeout=WAIT)
    assert exhausted.attempts == 2
    assert io_failed.value.error["type"] == "OSError"
    assert io_failed.value.error["message"] == "boom io"
    assert io_failed.value.error["reason"] == "retries exhausted after 2 attempts"
    assert "raise (OSError" in io_failed.value.traceback  # type: ignore[operator]
    assert unlisted.attempts == 1
    assert key_failed.value.error["type"] == "KeyError"
    assert "reason" not in key_failed.value.error


# -- leases ----------------------------------------------------------------------------


def test_lease_renewal_keeps_long_job_with_its_worker(queue: SkunkQueue) -> None:
    runs: list[str] = []

    @queue.event(routes=["foo"])
    def slow() -> str:
        runs.append(threading.current_thread().name)
        time.sleep(1.5)  # pause: a job body that outlives three lease periods
        return "done"

    with scheduler_thread(queue), worker_thread(queue, lease=0.5), worker_thread(queue, lease=0.5):
        run = slow.fire()
        assert run.wait(timeout=WAIT) == "done"
    assert len(runs) == 1
    assert run.attempts == 1 and run.deliveries == 1


def test_unrenewed_lease_is_recovered(queue: SkunkQueue) -> None:
    """The control for the test above: a holder that stops renewing loses the job."""

    @queue.event(routes=["foo"])
    def quick() -> str:
        return "rescued"

    run = quick.fire()
    [claimed] = queue.backend.claim(["foo"], "ghost", time.time(), 0.3)
    assert claimed.id == run.id
    with scheduler_thread(queue), worker_thread(queue, lease=0.5):
        assert run.wait(timeout=WAIT) == "rescued"
    assert run.attempts == 1 and run.deliveries == 2
    assert queue.backend.finish([], "ghost", time.time()) == []


def test_a_long_job_hands_back_the_rest_of_its_batch(queue: SkunkQueue) -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    @queue.event(routes=["foo"])
    def step(i: int) -> int:
        ran.append(i)
        if i == 0:
            started.set()
            release.wait(WAIT)
        return i

    handles = step.fire_many([(i,) for i in range(5)])
    with worker_thread(queue) as worker:
        assert started.wait(WAIT)
        # The whole batch was claimed at once; once job 0 runs long, the rest go back to
        # the route unrun, for any worker to take, while job 0 goes on.
        wait_until(
            lambda: all(h.state == "queued" for h in handles[1:]), what="the rest handed back"
        )
        assert handles[0].state == "running"
        worker.stop()
        release.set()
    assert ran == [0]
    assert handles[0].state == "complete" and handles[0].result == 0
    for handle in handles[1:]:
        record = queue.backend.get(handle.id, time.time())
        assert record is not None
        assert (record.state, record.deliveries, record.attempts, record.owner) == (
            "queued",
            0,
            0,
            None,
        )
    # Handed back, not lost: the next worker runs them, counting one delivery each.
    with worker_thread(queue):
        assert [h.wait(timeout=WAIT) for h in handles[1:]] == [1, 2, 3, 4]
    assert [h.deliveries for h in handles] == [1] * 5


# -- async def events ------------------------------------------------------------------


def test_an_async_event_is_awaited(queue: SkunkQueue) -> None:
    loops: list[int] = []

    @queue.event(routes=["foo"])
    async def add(first: int, second: int) -> int:
        await asyncio.sleep(0.01)
        loops.append(id(asyncio.get_running_loop()))
        return first + second

    with worker_thread(queue):
        assert add.fire(2, 3).wait(timeout=WAIT) == 5
        assert add.fire(4, 5).wait(timeout=WAIT) == 9
    assert len(loops) == 2 and loops[0] == loops[1]  # one event loop per worker, reused


def test_an_async_event_past_its_timeout_is_cancelled(queue: SkunkQueue) -> None:
    cancelled = threading.Event()

    @queue.event(routes=["foo"], timeout=0.2)
    async def hang() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @queue.event(routes=["foo"])
    async def after() -> str:
        return "still serving"

    with worker_thread(queue):
        run = hang.fire()
        with pytest.raises(JobFailed):
            run.wait(timeout=WAIT)
        assert after.fire().wait(timeout=WAIT) == "still serving"
    assert cancelled.is_set()
    assert run.error is not None and run.error["type"].endswith("JobTimeout")
    assert "timeout of 0.2" in run.error["message"]


def test_an_async_event_that_raises_is_retried(queue: SkunkQueue) -> None:
    calls: list[int] = []

    @queue.event(routes=["foo"], retry=Retry(max_attempts=2, delay=0, jitter=0))
    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first try")
        return len(calls)

    with worker_thread(queue), scheduler_thread(queue):
        assert flaky.fire().wait(timeout=WAIT) == 2


# -- the scheduler's step, with the clock passed in --------------------------------------


def test_scheduler_step_promotes_at_eta_and_fires_ticks(queue: SkunkQueue) -> None:
    @queue.event(routes=["foo"])
    def later(x: int) -> int:
        return x

    @queue.event(routes=["foo"], every=timedelta(seconds=3600))
    def hourly() -> str:
        return "tick"

    [schedule] = queue.backend.schedules()
    tick_at = schedule.next_fire
    run = later.fire_at(datetime.fromtimestamp(tick_at + 100, timezone.utc), 7)
    tick_id = tick_job_id(queue.name, hourly.name, tick_at)
    scheduler = Scheduler(queue.name, url=queue.config.url)
    try:
        scheduler.step(tick_at - 0.5)
        assert queue.get(tick_id) is None and run.state == "scheduled"
        scheduler.step(tick_at)
        tick = queue.get(tick_id)
        assert tick is not None and tick.state == "queued"
        scheduler.step(tick_at + 0.5)  # firing again is a no-op
        assert [j.id for j in queue.backend.list_jobs(time.time(), state="queued")] == [tick_id]
        [advanced] = queue.backend.schedules()
        assert advanced.next_fire == tick_at + 3600

        scheduler.step(tick_at + 99.5)
        assert run.state == "scheduled"
        scheduler.step(tick_at + 100)
        assert run.state == "queued"
    finally:
        scheduler.election.resign()
        scheduler.backend.close()
    with worker_thread(queue):
        assert run.wait(timeout=WAIT) == 7
        assert tick.wait(timeout=WAIT) == "tick"


def test_a_schedule_this_host_cannot_decode_stops_nothing_else(
    queue: SkunkQueue, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from skunkqueue.cli import main
    from skunkqueue.persistence import ScheduleRecord

    @queue.event(routes=["foo"], every=timedelta(seconds=3600))
    def hourly() -> str:
        return "tick"

    @queue.event(routes=["foo"])
    def later(x: int) -> int:
        return x

    [good] = queue.backend.schedules()
    tick_at = good.next_fire
    # Stored by a host that knows a zone this one does not, and one whose template makes
    # no valid job; both come due before the good one.
    for name, spec, template in (
        ("mars", {**good.spec, "timezone": "Mars/Olympus_Mons"}, good.template),
        ("hostile", good.spec, {**good.template, "timeout": "soon"}),
    ):
        queue.backend.save_schedule(
            ScheduleRecord(name, spec, template, tick_at - 60, tick_at - 3600), tick_at - 3600
        )
    run = later.fire_at(datetime.fromtimestamp(tick_at + 1, timezone.utc), 7)
    scheduler = Scheduler(queue.name, url=queue.config.url)
    try:
        with caplog.at_level("WARNING", logger="skunkqueue.scheduler"):
            wake = scheduler.step(tick_at - 30)
            assert wake > tick_at - 30  # the broken schedules' past next_fire is no wake-up
            scheduler.step(tick_at)
            scheduler.step(tick_at + 1)
        assert queue.get(tick_job_id(queue.name, hourly.name, tick_at)) is not None
        assert run.state == "queued"  # promotion goes on
        assert set(scheduler.broken) == {"mars", "hostile"}
        warnings = [r.getMessage() for r in caplog.records if "cannot be fired" in r.getMessage()]
        assert len(warnings) == 2, warnings  # once per schedule, not once per step
        assert "Mars/Olympus_Mons" in scheduler.broken["mars"][1]
        assert "timeout" in scheduler.broken["hostile"][1]
    finally:
        scheduler.election.resign()
        scheduler.backend.close()
    main(["schedules", "-q", queue.name, "--url", queue.config.url])
    listing = capsys.readouterr().out
    assert "mars  BROKEN: ConfigurationError: unknown time zone 'Mars/Olympus_Mons'" in listing
    assert "hostile  BROKEN: " in listing and f"{hourly.name}  every" in listing
    main(["status", "-q", queue.name, "--url", queue.config.url])
    status = capsys.readouterr().out
    assert "WARNING: schedule mars is broken and never fires" in status
    assert "WARNING: schedule hostile is broken" in status


def test_the_leading_scheduler_forgets_workers_that_ended_long_ago(queue: SkunkQueue) -> None:
    backend, now = queue.backend, time.time()
    prefix = WORKER_LEASE_PREFIX
    gone = backend.acquire_lease(prefix + "gone", "gone", now - 1000, ttl=3)
    backend.acquire_lease(prefix + "recent", "recent", now - 10, ttl=3)
    live = backend.acquire_lease(prefix + "live", "live", now, ttl=60)
    assert gone is not None and live is not None
    scheduler = Scheduler(queue.name, url=queue.config.url)
    try:
        scheduler.step(now)
    finally:
        scheduler.election.resign()
        scheduler.backend.close()
    # Forgotten: a new holder's token starts over instead of going on from the old one.
    assert backend.acquire_lease(prefix + "gone", "x", now, ttl=1).token == 1
    assert backend.acquire_lease(prefix + "recent", "y", now, ttl=1).token == 2
    assert backend.leases(prefix + "live", now) == [live]
