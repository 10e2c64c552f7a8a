"""Bad input fails at the earliest point, with a message that names the problem, and writes nothing.

"Nothing written" is checked on the backend itself: no schedule, no job record, no
registered event after a refused decoration or fire.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from skunkqueue import (
    BackendUnavailable,
    ConfigurationError,
    Retry,
    SerializationError,
    SkunkQueue,
)
from skunkqueue.config import redact
from skunkqueue.queue import lookup_event


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url)
    yield q
    q.close()


def assert_nothing_stored(queue: SkunkQueue) -> None:
    now = time.time()
    assert queue.backend.list_jobs(now) == []
    assert queue.backend.stats(now).counts == {}
    assert queue.backend.schedules() == []


def assert_not_registered(queue: SkunkQueue, name: str = "job") -> None:
    assert queue.events == {}
    assert lookup_event(queue.name, f"{__name__}.{name}") is None
    assert_nothing_stored(queue)


def decorate(queue: SkunkQueue, **options: Any) -> Any:
    def job() -> None:
        return None

    job.__qualname__ = "job"
    return queue.event(**options)(job)


def add_event(queue: SkunkQueue, **options: Any) -> Any:
    @queue.event(routes=["foo"], **options)
    def add(*args: Any, **kwargs: Any) -> None:
        return None

    return add


# -- at decoration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr", ["61 * * * *", "every minute", "* * *", "* * * * * * 2030", "0 0 31 2 *"]
)
def test_invalid_cron_expression(queue: SkunkQueue, expr: str) -> None:
    with pytest.raises(
        ConfigurationError, match=f"invalid cron expression '{expr.replace('*', '[*]')}'"
    ):
        decorate(queue, routes=["r"], cron=expr)
    assert_not_registered(queue)


def test_unknown_time_zone(queue: SkunkQueue) -> None:
    with pytest.raises(ConfigurationError, match="unknown time zone 'Europe/Atlantis'"):
        decorate(queue, routes=["r"], cron="0 * * * *", timezone="Europe/Atlantis")
    with pytest.raises(ConfigurationError, match="has no IANA name"):
        decorate(queue, routes=["r"], cron="0 * * * *", timezone=timezone(timedelta(hours=3)))
    assert_not_registered(queue)


def test_time_zone_objects_are_accepted(queue: SkunkQueue) -> None:
    decorate(queue, routes=["r"], cron="0 * * * *", timezone=ZoneInfo("Asia/Tokyo"))
    [schedule] = queue.backend.schedules()
    assert schedule.spec["timezone"] == "Asia/Tokyo"


def test_both_cron_and_every(queue: SkunkQueue) -> None:
    with pytest.raises(ConfigurationError, match="exactly one of cron= or every=, got both"):
        decorate(queue, routes=["r"], cron="* * * * *", every=timedelta(seconds=30))
    assert_not_registered(queue)


@pytest.mark.parametrize("every", [0, -5, 0.5, "30", timedelta(milliseconds=1500)])
def test_bad_interval(queue: SkunkQueue, every: Any) -> None:
    with pytest.raises(ConfigurationError, match="every="):
        decorate(queue, routes=["r"], every=every)
    assert_not_registered(queue)


@pytest.mark.parametrize("misfire", ["later", "", None, "ALL"])
def test_bad_misfire(queue: SkunkQueue, misfire: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"misfire=.* is not one of \('coalesce', 'all', 'skip'\)"
    ):
        decorate(queue, routes=["r"], cron="* * * * *", misfire=misfire)
    assert_not_registered(queue)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("foo", "routes must be a non-empty list of route names, not 'foo'"),
        ([], r"routes must be a non-empty list of route names, not \[\]"),
        ((), r"routes must be a non-empty list of route names"),
        ({"foo"}, r"routes must be a non-empty list of route names"),
        (["foo@bar"], "route names must be non-empty strings without '@'"),
        (["ok", ""], "route names must be non-empty strings without '@'"),
        (["ok", 5], "route names must be non-empty strings without '@'"),
    ],
)
def test_bad_routes(queue: SkunkQueue, routes: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        decorate(queue, routes=routes, cron="* * * * *")
    assert_not_registered(queue)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive, finite number of seconds, not 0"),
        ({"timeout": -1}, "timeout must be a positive, finite number of seconds, not -1"),
        ({"timeout": "30"}, "timeout must be a positive, finite number of seconds, not '30'"),
        ({"timeout": True}, "timeout must be a positive, finite number of seconds, not True"),
        (
            {"timeout": float("nan")},
            "timeout must be a positive, finite number of seconds, not nan",
        ),
        (
            {"timeout": float("inf")},
            "timeout must be a positive, finite number of seconds, not inf",
        ),
        ({"result_ttl": 0}, "result_ttl must be a positive, finite number of seconds, not 0"),
        ({"result_ttl": "1d"}, "result_ttl must be a positive, finite number of seconds"),
        ({"result_ttl": float("nan")}, "result_ttl must be a positive, finite number of seconds"),
        ({"grace": float("inf")}, "grace must be a finite number of seconds >= 0, not inf"),
        ({"retry": Retry(delay=1)}, None),
        ({"max_deliveries": 0}, "max_deliveries must be a positive integer, not 0"),
        ({"max_deliveries": 1.5}, "max_deliveries must be a positive integer, not 1.5"),
        ({"concurrency": 2}, None),
        ({"concurrency": 0}, "concurrency must be a positive integer .*, not 0"),
        ({"concurrency": -1}, "concurrency must be a positive integer .*, not -1"),
        ({"concurrency": True}, "concurrency must be a positive integer .*, not True"),
        ({"concurrency": 1.5}, "concurrency must be a positive integer .*, not 1.5"),
        ({"concurrency": "2"}, "concurrency must be a positive integer .*, not '2'"),
        ({"serializer": "yaml"}, r"serializer must be one of \('json', 'pickle'\), not 'yaml'"),
        ({"retry": 0}, "Retry.max_attempts must be an integer >= 1, not 0"),
        ({"retry": "3"}, "retry must be a Retry or an int"),
        ({"jitter": 5}, None),
        ({"jitter": -1}, "jitter must be a positive, finite number of seconds, not -1"),
        ({"jitter": "5"}, "jitter must be a positive, finite number of seconds, not '5'"),
        ({"jitter": True}, "jitter must be a positive, finite number of seconds, not True"),
        ({"jitter": float("inf")}, "jitter must be a positive, finite number of seconds, not inf"),
        ({"jitter": 60}, r"jitter must be shorter than the time between two ticks \(60 s\)"),
    ],
)
def test_bad_event_options(queue: SkunkQueue, options: dict[str, Any], message: str | None) -> None:
    if message is None:  # the control: these options are accepted
        decorate(queue, routes=["r"], every=60, **options)
        return
    with pytest.raises(ConfigurationError, match=message):
        decorate(queue, routes=["r"], every=60, **options)
    assert_not_registered(queue)


def test_generator_functions_are_refused_at_decoration(queue: SkunkQueue) -> None:
    def numbers() -> Any:
        yield 1

    async def stream() -> Any:
        yield 1

    for function in (numbers, stream):
        with pytest.raises(ConfigurationError, match="is a generator function"):
            queue.event(routes=["r"])(function)
    assert_not_registered(queue)


# -- at fire time ----------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (({1, 2},), {}),
        ((Opaque(),), {}),
        ((datetime(2026, 1, 1),), {}),
        ((), {"when": date(2026, 1, 1)}),
        ((b"bytes",), {}),
        ((Decimal("1.5"),), {}),
        ((float("nan"),), {}),
        ((), {"nested": {"deep": [1, {2, 3}]}}),
    ],
)
def test_unserializable_arguments(queue: SkunkQueue, args: tuple, kwargs: dict) -> None:
    add = add_event(queue)
    with pytest.raises(SerializationError) as refused:
        add.fire(*args, **kwargs)
    message = str(refused.value)
    assert "cannot be serialized as JSON" in message and add.name in message
    assert "serializer='pickle'" in message
    assert_nothing_stored(queue)
    assert add.last is None and add.state is None


def test_unserializable_arguments_every_entry_point(queue: SkunkQueue) -> None:
    add = add_event(queue)
    with pytest.raises(SerializationError, match="pickle"):
        add.fire_at(timedelta(seconds=5), {1})
    with pytest.raises(SerializationError, match="pickle"):
        add.send(args=({1},), job_id="explicit")
    with pytest.raises(SerializationError, match="pickle"):
        add.send(args=(), kwargs={"x": object()})
    with pytest.raises(SerializationError, match="keyword argument names must be strings"):
        add.send(args=(), kwargs={1: "x"})
    with pytest.raises(SerializationError, match="kwargs must be a dict"):
        add.send(args=(), kwargs=[("x", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args of .* must be a tuple or list, not str"):
        add.send(args="45")  # type: ignore[arg-type]
    assert_nothing_stored(queue)


def test_fire_many_with_one_bad_item_stores_none(queue: SkunkQueue) -> None:
    add = add_event(queue)
    with pytest.raises(SerializationError, match="pickle"):
        add.fire_many([(1, 2), (3, 4), ({5},), (6, 7)])
    with pytest.raises(SerializationError, match="pickle"):
        add.fire_many([{"a": 1}, {"b": object()}])
    assert_nothing_stored(queue)
    assert add.last is None


def test_unserializable_is_fine_with_pickle_opt_in(queue: SkunkQueue) -> None:
    add = add_event(queue, serializer="pickle")
    run = add.fire({1, 2}, when=datetime(2026, 1, 1))
    record = queue.backend.get(run.id, time.time())
    assert record is not None and record.serializer == "pickle"


@pytest.mark.parametrize("when", [5, 5.0, "2026-12-24T18:00:00", date(2026, 12, 24)])
def test_fire_at_needs_datetime_or_timedelta(queue: SkunkQueue, when: Any) -> None:
    add = add_event(queue)
    with pytest.raises(
        TypeError, match=f"a time must be a datetime or a timedelta, not {type(when).__name__}"
    ):
        add.fire_at(when, 1, 2)
    assert_nothing_stored(queue)


# -- naive and aware times --------------------------------------------------------------


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process's local time zone set to ``request.param``."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_naive_and_aware_datetimes_agree(queue: SkunkQueue, local_zone: str) -> None:
    add = add_event(queue)
    naive = datetime(2036, 7, 1, 12, 30)
    aware_local = naive.replace(tzinfo=ZoneInfo(local_zone))
    aware_utc = aware_local.astimezone(timezone.utc)
    handles = [add.fire_at(t, 1) for t in (naive, aware_local, aware_utc, naive.astimezone())]
    etas = {queue.backend.get(h.id, time.time()).eta for h in handles}  # type: ignore[union-attr]
    assert etas == {aware_utc.timestamp()}
    # The zone really is in effect: the same wall time means a different instant elsewhere.
    elsewhere = naive.replace(tzinfo=ZoneInfo("Pacific/Auckland")).timestamp()
    assert elsewhere not in etas


# -- at construction --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_url",
    [
        "foo://user:secret@host/db",
        "postgres://admin:secret@db.example:5432/jobs",
        "secret",
        "memory",
    ],
)
def test_unknown_backend_scheme(bad_url: str) -> None:
    with pytest.raises(ConfigurationError, match="unsupported backend URL") as refused:
        SkunkQueue("demo", url=bad_url)
    message = str(refused.value)
    assert redact(bad_url) in message
    if "@" in bad_url:
        assert "secret" not in message
        assert ":***@" in message


def test_unparseable_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as refused:
        SkunkQueue("demo", url="foo://user:secret@[broken/db")
    assert "secret" not in str(refused.value)


def test_sqlite_url_with_host_and_password_is_redacted() -> None:
    with pytest.raises(ConfigurationError, match="has a host") as refused:
        SkunkQueue("demo", url="sqlite://user:secret@host/x")
    assert "secret" not in str(refused.value)
    assert "sqlite://user:***@host/x" in str(refused.value)


def test_unreachable_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "jobs.db"
    bad_url = f"sqlite:///{missing}"
    with pytest.raises(BackendUnavailable) as refused:
        SkunkQueue("demo", url=bad_url)
    assert bad_url in str(refused.value)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("bad_url", ["sqlite://", "sqlite:///", 42, None])
def test_malformed_backend_urls(
    bad_url: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    if bad_url is None:
        # url=None means "not given": the default applies. That is not an error.
        monkeypatch.delenv("SKUNKQUEUE_URL", raising=False)
        SkunkQueue("demo", url=None).close()
        return
    with pytest.raises(ConfigurationError):
        SkunkQueue("demo", url=bad_url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("mongodb://:secret@host/db", "mongodb://:***@host/db"),
        ("foo://user:secret@host/db", "foo://user:***@host/db"),
        ("sqlite://user:secret@host/x", "sqlite://user:***@host/x"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:///jobs.db", "sqlite:///jobs.db"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "secret" not in redact(url)


@pytest.mark.parametrize(
    "options",
    [{"colour": "blue"}, {"urls": "memory://"}, {"lease_seconds": 5}, {"routes": ["foo"]}],
)
def test_unknown_queue_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=f"unknown queue option.*{next(iter(options))}"):
        SkunkQueue("demo", url=f"memory://{uuid.uuid4().hex}", **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_type": "fanout"}, "queue_type must be one of"),
        ({"serializer": "marshal"}, "serializer must be one of"),
        ({"result_ttl": 0}, "result_ttl must be a positive, finite number"),
        ({"lease": -1}, "lease must be a positive, finite number"),
        ({"max_deliveries": 0}, "max_deliveries must be a positive integer"),
        ({"backend": "cassandra"}, "unknown backend 'cassandra'"),
        ({"backend": "sqlite", "url": "memory://"}, "either url= or the seed keys"),
    ],
)
def test_bad_queue_options(
    options: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    opts = {"url": f"memory://{uuid.uuid4().hex}", **options}
    if "backend" in options and options.get("url") is None:
        del opts["url"]
    with pytest.raises(ConfigurationError, match=message):
        SkunkQueue("demo", **opts)
    assert list(tmp_path.iterdir()) == []  # no database file created either


@pytest.mark.parametrize("bad_name", ["", None, "a b", "q{x}", 5])
def test_bad_queue_names(bad_name: Any) -> None:
    with pytest.raises(ConfigurationError, match="queue"):
        SkunkQueue(bad_name, url="memory://")


def test_retry_is_validated_before_registration(queue: SkunkQueue) -> None:
    with pytest.raises(ConfigurationError, match="Retry.backoff"):
        decorate(queue, routes=["r"], every=60, retry=Retry(backoff=0))
    assert_not_registered(queue)


def test_an_unknown_state_filter_is_an_error_not_an_empty_list(
    queue: SkunkQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    from skunkqueue.cli import main

    with pytest.raises(ValueError, match="unknown job state 'bogus': one of scheduled"):
        queue.jobs(state="bogus")
    with pytest.raises(SystemExit) as stopped:
        main(["jobs", "-q", queue.name, "--url", queue.config.url, "--state", "bogus"])
    assert stopped.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["result_ttl", "lease", "leader_ttl", "heartbeat"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0, "5", True])
def test_queue_times_must_be_positive_finite_seconds(name: str, value: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=f"{name} must be a positive, finite number of seconds"
    ):
        SkunkQueue("times", url="memory://", **{name: value})


def test_queue_times_accept_what_is_right() -> None:
    queue = SkunkQueue(
        "times", url="memory://", lease=0.5, heartbeat=1, leader_ttl=3, result_ttl=60
    )
    assert (queue.config.lease, queue.config.heartbeat) == (0.5, 1)
    queue.close()
