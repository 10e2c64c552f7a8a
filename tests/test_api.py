"""The public API in one process: constructing queues, firing, handles, schedules, retries, TTLs.

Every test that stores jobs runs on ``memory://`` and on a SQLite file. Jobs are driven
through their states with the backend's own verbs (``claim``/``finish`` with an explicit
``now``) where a test is about what a producer sees, so no worker or clock is needed.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from skunkqueue import JobFailed, JobHandle, Retry, SkunkQueue
from skunkqueue.config import DEFAULT_URL, URL_ENV
from skunkqueue.errors import ConfigurationError
from skunkqueue.jobs import Outcome
from skunkqueue.persistence import memory as memory_backend
from skunkqueue.persistence import sqlite as sqlite_backend
from skunkqueue.serialization import encode
from skunkqueue.worker.runner import describe_error

from .waiting import wait_until

OWNER = "test-owner"


@pytest.fixture
def name() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue(url: str, name: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(name, url=url)
    yield q
    q.close()


def add_event(queue: SkunkQueue, **options: Any) -> Any:
    @queue.event(routes=["foo"], **options)
    def add(first: int, second: int) -> int:
        return first + second

    return add


def take(queue: SkunkQueue, job_id: str, now: float | None = None) -> None:
    """Claim ``job_id`` as OWNER (it must be the only queued job)."""
    claimed = queue.backend.claim(["foo"], OWNER, now or time.time(), 30.0, limit=10)
    assert [j.id for j in claimed] == [job_id]


def finish(queue: SkunkQueue, job_id: str, outcome: Outcome, now: float | None = None) -> None:
    take(queue, job_id, now)
    assert queue.backend.finish([outcome], OWNER, now or time.time()) == [True]


# -- constructing a queue -------------------------------------------------------------


def test_default_url_is_sqlite_file_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(URL_ENV, raising=False)
    queue = SkunkQueue("demo")
    try:
        assert queue.config.url == DEFAULT_URL == "sqlite:///skunkqueue.db"
        assert (tmp_path / "skunkqueue.db").is_file()
        run = add_event(queue).fire(1, 2)
        assert SkunkQueue("demo", url=f"sqlite:///{tmp_path}/skunkqueue.db").get(run.id) is not None
    finally:
        queue.close()


def test_default_url_comes_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env_url = f"sqlite:///{tmp_path}/from-env.db"
    monkeypatch.setenv(URL_ENV, env_url)
    queue = SkunkQueue("demo")
    try:
        assert queue.config.url == env_url
        assert (tmp_path / "from-env.db").is_file()
        assert not (tmp_path / "skunkqueue.db").exists()
    finally:
        queue.close()


def test_explicit_url_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path}/from-env.db")
    queue = SkunkQueue("demo", url=f"memory://{uuid.uuid4().hex}")
    assert queue.config.url.startswith("memory://")
    assert not (tmp_path / "from-env.db").exists()


def test_seed_default_cfg_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    queue = SkunkQueue(name, **sqlite_backend.default_cfg)
    try:
        assert queue.config.url == "sqlite:///skunkqueue.db"
        run = add_event(queue).fire(4, 5)
        assert run.state == "queued"
        assert (tmp_path / "skunkqueue.db").is_file()
    finally:
        queue.close()


def test_seed_default_cfg_memory_shares_one_store(name: str) -> None:
    producer = SkunkQueue(name, **memory_backend.default_cfg)
    other = SkunkQueue(name, **memory_backend.default_cfg)
    assert producer.config.url.startswith("memory://")
    run = add_event(producer).fire(4, 5)
    assert other.get(run.id) is not None


# -- registering events ---------------------------------------------------------------


def test_event_job_alias_and_bare_decorator(queue: SkunkQueue) -> None:
    assert SkunkQueue.job is SkunkQueue.event

    @queue.job(routes=["foo"])
    def aliased(x: int) -> int:
        return x * 2

    @queue.event
    def bare(x: int) -> int:
        return x + 1

    assert aliased(3) == 6 and bare(3) == 4  # still callable locally
    assert aliased.routes == ["foo"]
    assert bare.routes == ["default"]
    assert aliased.name.endswith("test_event_job_alias_and_bare_decorator.<locals>.aliased")
    assert queue.events == {aliased.name: aliased, bare.name: bare}
    record = queue.backend.get(bare.fire(1).id, time.time())
    assert record is not None and record.route == "default" and record.event == bare.name


# -- firing ---------------------------------------------------------------------------


def test_fire_returns_handle(queue: SkunkQueue) -> None:
    add = add_event(queue)
    run = add.fire(4, 5)
    assert isinstance(run, JobHandle)
    assert run.state == "queued"
    assert run.result is None and run.error is None and run.attempts == 0
    finish(queue, run.id, Outcome(run.id, "complete", result=encode("json", 9, "r")))
    assert run.state == "complete"
    assert run.result == 9 and run.attempts == 1 and run.error is None
    assert run.wait(timeout=1) == 9


def test_fire_stores_arguments_and_event_fields(queue: SkunkQueue) -> None:
    add = add_event(queue, retry=Retry(max_attempts=4), timeout=7, result_ttl=60, max_deliveries=2)
    before = time.time()
    run = add.fire(4, second=5)
    record = queue.backend.get(run.id, time.time())
    assert record is not None
    assert record.event == add.name and record.route == "foo"
    assert record.payload == '[[4],{"second":5}]'
    assert record.serializer == "json"
    assert before <= record.eta <= time.time()
    assert record.timeout == 7 and record.result_ttl == 60 and record.max_deliveries == 2
    assert record.retry is not None and record.retry["max_attempts"] == 4


def test_fire_at_aware_datetime(queue: SkunkQueue) -> None:
    when = datetime(2036, 12, 24, 18, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    run = add_event(queue).fire_at(when, 4, 5)
    record = queue.backend.get(run.id, time.time())
    assert record is not None
    assert record.eta == datetime(2036, 12, 24, 17, 0, tzinfo=timezone.utc).timestamp()
    assert record.state == run.state == "scheduled"


def test_fire_at_naive_datetime_is_local_time(queue: SkunkQueue) -> None:
    when = datetime.now() + timedelta(hours=2)
    run = add_event(queue).fire_at(when, 4, 5)
    record = queue.backend.get(run.id, time.time())
    assert record is not None
    assert record.eta == when.timestamp()
    assert record.eta == when.astimezone().timestamp()  # the local zone's reading
    assert record.state == "scheduled"


def test_fire_at_timedelta_is_relative_to_fire_time(queue: SkunkQueue) -> None:
    before = time.time()
    run = add_event(queue).fire_at(timedelta(seconds=60), 4, 5)
    after = time.time()
    record = queue.backend.get(run.id, time.time())
    assert record is not None
    assert before + 60 <= record.eta <= after + 60
    assert record.state == "scheduled"


def test_fire_at_past_datetime_is_queued_at_once(queue: SkunkQueue) -> None:
    when = datetime.now(timezone.utc) - timedelta(minutes=5)
    run = add_event(queue).fire_at(when, 4, 5)
    assert run.state == "queued"
    record = queue.backend.get(run.id, time.time())
    assert record is not None and record.eta == when.timestamp()


def test_send_explicit_form(queue: SkunkQueue) -> None:
    add = add_event(queue)
    when = datetime(2036, 1, 1, tzinfo=timezone.utc)
    run = add.send(args=(4, 5), kwargs=None, eta=when, job_id="my-job", route="bar")
    assert run.id == "my-job"
    record = queue.backend.get("my-job", time.time())
    assert record is not None
    assert record.route == "bar" and record.eta == when.timestamp() and record.state == "scheduled"
    assert record.payload == "[[4,5],{}]"

    defaults = add.send()
    record = queue.backend.get(defaults.id, time.time())
    assert record is not None and record.payload == "[[],{}]" and record.route == "foo"
    assert record.state == "queued"


def test_send_with_existing_job_id_is_idempotent(queue: SkunkQueue) -> None:
    add = add_event(queue)
    first = add.send(args=(1, 2), job_id="once")
    stored = queue.backend.get("once", time.time())
    second = add.send(args=(3, 4), job_id="once", eta=timedelta(hours=1), route="bar")
    assert first.id == second.id == "once"
    again = queue.backend.get("once", time.time())
    assert again == stored  # not overwritten: same payload, eta, route, seq
    assert again is not None and again.payload == "[[1,2],{}]" and again.state == "queued"
    assert [j.id for j in queue.backend.list_jobs(time.time())] == ["once"]
    assert queue.backend.stats(time.time()).counts == {("queued", "foo"): 1}


def test_fire_with_job_id_after_it_finished_is_not_rerun(queue: SkunkQueue) -> None:
    add = add_event(queue)
    add.send(args=(1, 2), job_id="done")
    finish(queue, "done", Outcome("done", "complete", result="3"))
    add.send(args=(1, 2), job_id="done")
    record = queue.backend.get("done", time.time())
    assert record is not None and record.state == "complete" and record.attempts == 1


def test_fire_many_one_put_returns_handles(
    queue: SkunkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_event(queue)
    puts: list[int] = []
    real_put = queue.backend.put

    def counting_put(jobs: Any, now: float, **options: Any) -> list[bool]:
        puts.append(len(jobs))
        return real_put(jobs, now, **options)

    monkeypatch.setattr(queue.backend, "put", counting_put)
    handles = add.fire_many([(4, 5), (6, 7), {"first": 1, "second": 2}])
    assert puts == [3]
    assert len(handles) == 3 and len({h.id for h in handles}) == 3
    assert all(isinstance(h, JobHandle) and h.state == "queued" for h in handles)
    payloads = [queue.backend.get(h.id, time.time()).payload for h in handles]  # type: ignore[union-attr]
    assert payloads == ["[[4,5],{}]", "[[6,7],{}]", '[[],{"first":1,"second":2}]']
    stored = queue.backend.list_jobs(time.time())
    assert [j.id for j in stored] == [h.id for h in handles]  # in fire order
    assert add.last is not None and add.last.id == handles[-1].id
    assert add.fire_many([]) == [] and puts == [3]


def test_event_result_and_state_follow_latest_fire(queue: SkunkQueue) -> None:
    add = add_event(queue)
    assert add.result is None and add.state is None
    first = add.fire(1, 2)
    assert add.state == "queued"
    finish(queue, first.id, Outcome(first.id, "complete", result="3"))
    assert add.state == "complete" and add.result == 3
    add.fire_at(timedelta(hours=1), 5, 5)
    assert add.state == "scheduled" and add.result is None
    assert first.result == 3  # the older handle still reads its own job


# -- looking up and cancelling --------------------------------------------------------


def test_get_returns_handle_or_none(queue: SkunkQueue) -> None:
    run = add_event(queue).fire(1, 2)
    found = queue.get(run.id)
    assert isinstance(found, JobHandle) and found.id == run.id and found.state == "queued"
    assert queue.get("no-such-job") is None


def test_cancel(queue: SkunkQueue) -> None:
    add = add_event(queue)
    scheduled = add.fire_at(timedelta(hours=1), 1, 2)
    assert queue.cancel(scheduled.id) is True
    assert scheduled.state == "cancelled"
    assert scheduled.error == {"reason": "cancelled by user"}
    assert queue.cancel(scheduled.id) is False  # already finished

    queued = add.fire(1, 2)
    assert queue.cancel(queued.id, reason="not needed") is True
    assert queued.state == "cancelled" and queued.error == {"reason": "not needed"}

    running = add.fire(1, 2)
    take(queue, running.id)
    assert queue.cancel(running.id) is False
    assert running.state == "running"
    assert queue.backend.finish(
        [Outcome(running.id, "complete", result="3")], OWNER, time.time()
    ) == [True]
    assert queue.cancel(running.id) is False
    assert running.state == "complete"

    assert queue.cancel("no-such-job") is False


def test_cancel_retrying_job(queue: SkunkQueue) -> None:
    run = add_event(queue, retry=3).fire(1, 2)
    error = {"type": "OSError", "message": "flaky"}
    finish(queue, run.id, Outcome(run.id, "retrying", error=error, eta=time.time() + 3600))
    assert run.state == "retrying"
    assert queue.cancel(run.id) is True
    assert run.state == "cancelled"


# -- cron and interval schedules ---------------------------------------------------------


def define_tick(queue: SkunkQueue, routes: list[str] | None = None, **schedule: Any) -> Any:
    @queue.event(routes=routes or ["tick"], **schedule)
    def tick() -> None:
        return None

    return tick


def test_cron_event_stores_schedule_at_decoration(queue: SkunkQueue) -> None:
    before = time.time()
    tick = define_tick(queue, cron="*/5 * * * *", timezone="Europe/Berlin")
    [schedule] = queue.backend.schedules()
    assert schedule.name == tick.name
    assert schedule.spec["cron"] == "*/5 * * * *" and schedule.spec["timezone"] == "Europe/Berlin"
    assert schedule.spec["misfire"] == "coalesce"
    assert before < schedule.next_fire <= before + 300
    assert schedule.next_fire % 300 == 0  # Berlin is a whole-hour offset from UTC
    assert schedule.template["event"] == tick.name and schedule.template["route"] == "tick"
    assert queue.backend.list_jobs(time.time()) == []  # no job until the scheduler fires


def test_every_event_stores_schedule(queue: SkunkQueue) -> None:
    before = time.time()
    beat = define_tick(queue, every=timedelta(seconds=30))
    [schedule] = queue.backend.schedules()
    assert schedule.name == beat.name and schedule.spec["every"] == 30.0
    assert before < schedule.next_fire <= before + 30 and schedule.next_fire % 30 == 0


@pytest.mark.parametrize("given", [{"job_id": ""}, {"job_id": 7}, {"route": b"foo"}])
def test_a_job_id_or_route_that_is_not_text_is_refused_at_fire_time(
    queue: SkunkQueue, given: dict[str, Any]
) -> None:
    add = add_event(queue)
    with pytest.raises(TypeError, match="must be a non-empty string"):
        add.send((1, 2), **given)
    assert queue.jobs() == []


def test_grace_and_max_catchup_are_set_at_decoration(queue: SkunkQueue) -> None:
    define_tick(queue, cron="* * * * *", misfire="all", grace=timedelta(seconds=30), max_catchup=5)
    [schedule] = queue.backend.schedules()
    assert (schedule.spec["grace"], schedule.spec["max_catchup"]) == (30.0, 5)
    with pytest.raises(ConfigurationError, match="grace must be a finite number of seconds >= 0"):
        queue.event(routes=["tick"], cron="* * * * *", grace=-1)(lambda: None)
    with pytest.raises(ConfigurationError, match="max_catchup must be an integer >= 1"):
        queue.event(routes=["tick"], cron="* * * * *", max_catchup=0)(lambda: None)


def test_six_field_cron_stores_seconds_schedule(queue: SkunkQueue) -> None:
    before = time.time()
    define_tick(queue, cron="* * * * * */10")
    [schedule] = queue.backend.schedules()
    assert before < schedule.next_fire <= before + 10 and schedule.next_fire % 10 == 0


def test_schedule_redecoration(url: str, name: str) -> None:
    first = SkunkQueue(name, url=url)
    define_tick(first, cron="0 3 * * *")
    [stored] = first.backend.schedules()
    # Pretend the scheduler already fired ticks and moved next_fire on.
    stored.next_fire += 86400 * 7
    first.backend.save_schedule(stored, time.time())

    # Another process imports the unchanged module: the stored progress is kept.
    second = SkunkQueue(name, url=url)
    define_tick(second, cron="0 3 * * *")
    [same] = second.backend.schedules()
    assert same.next_fire == stored.next_fire and same.spec == stored.spec

    # Same expression, other route: the template changes, next_fire is still kept.
    define_tick(SkunkQueue(name, url=url), routes=["other"], cron="0 3 * * *")
    [moved] = second.backend.schedules()
    assert moved.template["route"] == "other" and moved.next_fire == stored.next_fire

    # A changed expression replaces the stored one and its next fire time.
    before = time.time()
    define_tick(SkunkQueue(name, url=url), routes=["other"], cron="*/15 * * * *")
    [replaced] = second.backend.schedules()
    assert replaced.spec["cron"] == "*/15 * * * *"
    assert before < replaced.next_fire <= before + 900 and replaced.next_fire % 900 == 0

    # From cron to interval under the same name: still one schedule.
    define_tick(SkunkQueue(name, url=url), every=60)
    [interval] = second.backend.schedules()
    assert interval.spec["every"] == 60.0 and interval.spec["cron"] is None


# -- retry policy ------------------------------------------------------------------------


def test_retry_shorthand_and_defaults(queue: SkunkQueue) -> None:
    flaky = add_event(queue, retry=3)
    assert flaky.retry == Retry(max_attempts=3)
    assert add_event(queue).retry is None
    assert Retry.coerce(None) is None
    policy = Retry(on=OSError)
    assert policy.on == (OSError,)
    assert Retry().on == (Exception,)
    record = queue.backend.get(flaky.fire(1, 2).id, time.time())
    assert record is not None and record.retry == Retry(max_attempts=3).describe()
    assert record.retry["on"] == ["builtins.Exception"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer >= 1"),
        ({"delay": -1}, "Retry.delay must be a finite number of seconds >= 0"),
        ({"delay": float("nan")}, "Retry.delay must be a finite number of seconds >= 0, not nan"),
        ({"max_delay": "5"}, "Retry.max_delay must be a finite number of seconds >= 0"),
        ({"max_delay": float("inf")}, "Retry.max_delay must be a finite number of seconds >= 0"),
        ({"backoff": 0.5}, "Retry.backoff must be a finite number >= 1"),
        ({"backoff": float("inf")}, "Retry.backoff must be a finite number >= 1, not inf"),
        ({"jitter": float("nan")}, "Retry.jitter must be between 0 and 1"),
        ({"jitter": 1.5}, "Retry.jitter must be between 0 and 1"),
        ({"jitter": -0.1}, "Retry.jitter must be between 0 and 1"),
        ({"on": ()}, "Retry.on must be exception types"),
        ({"on": (ValueError, int)}, "Retry.on must be exception types"),
        ({"on": "IOError"}, "Retry.on must be exception types"),
    ],
)
def test_retry_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        Retry(**kwargs)


@pytest.mark.parametrize("bad", ["3", True, 2.0, Retry])
def test_retry_argument_validation(queue: SkunkQueue, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="retry must be a Retry or an int"):
        add_event(queue, retry=bad)
    assert queue.events == {}


def test_retry_delay_backoff_without_jitter() -> None:
    policy = Retry(max_attempts=10, delay=1.5, backoff=2.0, max_delay=20, jitter=0)
    assert [policy.delay_after(n) for n in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 20, 20]
    flat = Retry(delay=2.0, backoff=1.0, jitter=0)
    assert [flat.delay_after(n) for n in (1, 5, 50)] == [2.0, 2.0, 2.0]


def test_retry_jitter_by_its_bounds_and_distribution() -> None:
    """Judged by what jitter promises, not by replaying its formula: delays spread evenly
    across base * (1 ± jitter), centred on the base, and never past max_delay."""
    policy = Retry(max_attempts=10, delay=1.0, backoff=3.0, max_delay=50, jitter=0.25)
    rng = random.Random(1234)
    for attempt, base in ((1, 1.0), (2, 3.0), (3, 9.0), (4, 27.0)):
        draws = sorted(policy.delay_after(attempt, rng) for _ in range(4000))
        assert base * 0.75 <= draws[0] and draws[-1] <= base * 1.25
        assert statistics.fmean(draws) == pytest.approx(base, rel=0.02)
        # Uniform: each quarter of the band holds about a quarter of the draws.
        for q in (1, 2, 3):
            edge = base * (0.75 + 0.125 * q)
            share = sum(d < edge for d in draws) / len(draws)
            assert share == pytest.approx(q / 4, abs=0.03), (attempt, q, share)
    # Past the cap: spread below max_delay, never on or above it in a pile.
    capped = [policy.delay_after(5, rng) for _ in range(4000)]
    assert all(50 * 0.75 <= d <= 50 for d in capped)
    assert sum(d == 50 for d in capped) <= 1
    assert statistics.fmean(capped) == pytest.approx(50 * 0.875, rel=0.02)
    # The same seed gives the same delays (a policy is reproducible under test).
    assert policy.delay_after(2, random.Random(7)) == policy.delay_after(2, random.Random(7))


def test_retry_delay_never_overflows_and_never_passes_max_delay() -> None:
    # delay * backoff ** n overflows a float past about 1,025 doublings.
    policy = Retry(max_attempts=10**9, delay=1.0, backoff=2.0, max_delay=300, jitter=0.5)
    rng = random.Random(3)
    for attempt in (1, 2, 9, 10, 1025, 1026, 5000, 10**8):
        assert 0 <= policy.delay_after(attempt, rng) <= 300
    tiny = Retry(delay=1e-300, backoff=1e10, max_delay=1e300, jitter=0)
    assert tiny.delay_after(30) == pytest.approx(1e-10)
    assert Retry(delay=5, max_delay=1, jitter=0).delay_after(1) == 1


def test_retry_retries_only_listed_exceptions() -> None:
    policy = Retry(max_attempts=3, on=(OSError,))
    assert policy.retries(ConnectionError("x"), 1)  # a subclass counts
    assert policy.retries(OSError("x"), 2)
    assert not policy.retries(OSError("x"), 3)  # the third execution was the last
    assert not policy.retries(ValueError("x"), 1)


# -- waiting on a handle -----------------------------------------------------------------


def test_wait_raises_job_failed_with_stored_error(queue: SkunkQueue) -> None:
    run = add_event(queue).fire(1, 2)
    try:
        raise ValueError("bad input 42")
    except ValueError as exc:
        error = describe_error(exc)
    finish(queue, run.id, Outcome(run.id, "error", error=error))
    with pytest.raises(JobFailed) as failed:
        run.wait(timeout=1)
    assert failed.value.job_id == run.id and failed.value.state == "error"
    assert failed.value.error["type"] == "ValueError"
    assert failed.value.error["message"] == "bad input 42"
    assert failed.value.traceback is not None and "raise ValueError" in failed.value.traceback
    assert "ValueError: bad input 42" in str(failed.value)
    assert run.error == error and run.attempts == 1


def test_wait_raises_job_failed_when_cancelled(queue: SkunkQueue) -> None:
    run = add_event(queue).fire_at(timedelta(hours=1), 1, 2)
    queue.cancel(run.id, reason="changed my mind")
    with pytest.raises(JobFailed, match="cancelled.*changed my mind") as failed:
        run.wait(timeout=1)
    assert failed.value.state == "cancelled"
    assert failed.value.error == {"reason": "changed my mind"}


def test_wait_times_out(queue: SkunkQueue) -> None:
    run = add_event(queue).fire(1, 2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{run.id}.*state: queued"):
        run.wait(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0


def test_wait_returns_when_job_completes_later(queue: SkunkQueue) -> None:
    import threading

    run = add_event(queue).fire(1, 2)
    done = threading.Timer(0.1, finish, (queue, run.id, Outcome(run.id, "complete", result="3")))
    done.start()
    try:
        assert run.wait(timeout=5) == 3
    finally:
        done.join()


# -- result TTL --------------------------------------------------------------------------


def test_finished_job_expires_after_result_ttl(url: str, name: str) -> None:
    queue = SkunkQueue(name, url=url, result_ttl=100)
    default = add_event(queue)

    @queue.event(routes=["foo"], result_ttl=5)
    def short(x: int) -> int:
        return x

    t0 = time.time()
    long_run = default.send(args=(1, 2), job_id="long")
    short_run = short.send(args=(1,), job_id="short")
    claimed = queue.backend.claim(["foo"], OWNER, t0, 30.0, limit=10)
    assert {j.id for j in claimed} == {"long", "short"}
    outcomes = [Outcome(j.id, "complete", result="1") for j in claimed]
    assert queue.backend.finish(outcomes, OWNER, t0 + 1) == [True, True]

    short_rec = queue.backend.get("short", t0 + 1)
    long_rec = queue.backend.get("long", t0 + 1)
    assert short_rec is not None and short_rec.result_ttl == 5 and short_rec.expires_at == t0 + 6
    assert long_rec is not None and long_rec.result_ttl == 100 and long_rec.expires_at == t0 + 101

    assert queue.backend.get("short", t0 + 5.9) is not None
    assert queue.backend.get("short", t0 + 6) is None
    assert queue.backend.get("long", t0 + 6) is not None
    assert queue.backend.get("long", t0 + 101) is None
    assert [j.id for j in queue.backend.list_jobs(t0 + 50)] == ["long"]
    assert long_run.id == "long" and short_run.id == "short"


def test_unfinished_job_does_not_expire(queue: SkunkQueue) -> None:
    run = add_event(queue, result_ttl=1).fire_at(timedelta(hours=1), 1, 2)
    assert queue.backend.get(run.id, time.time() + 10 * 86400) is not None


def test_expired_result_is_gone_for_queue_get(url: str, name: str) -> None:
    queue = SkunkQueue(name, url=url, result_ttl=0.2)
    run = add_event(queue).fire(1, 2)
    finish(queue, run.id, Outcome(run.id, "complete", result="3"))
    assert queue.get(run.id) is not None and run.result == 3
    wait_until(lambda: queue.get(run.id) is None, what="the result to expire")
    assert run.state is None and run.result is None
    with pytest.raises(JobFailed, match="expired"):
        run.wait(timeout=1)
