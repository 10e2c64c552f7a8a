"""Retrying by hand and reading a job's whole record through the API: ``queue.retry``,
``queue.retry_all``, ``handle.info()``, on memory and on a SQLite file (``url`` fixture).
Jobs are failed with the backend's own verbs, so no worker is needed."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from skunkqueue import BroadcastHandle, JobInfo, JobNotRetryable, SkunkQueue
from skunkqueue import queue as queue_module
from skunkqueue.jobs import Outcome
from skunkqueue.persistence import open_backend, sqlite

ERR = {"type": "ValueError", "message": "bad", "traceback": "Traceback\nValueError: bad"}


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url)
    yield q
    q.close()


def fail(queue: SkunkQueue, job_id: str, route: str = "foo", error: dict | None = None) -> None:
    """Run the queued job ``job_id`` on ``route`` to an ``error`` outcome."""
    backend = queue.backend
    [taken] = backend.claim([route], "w", backend.now(), 30.0)
    assert taken.id == job_id
    outcome = Outcome(job_id, "error", error=error or ERR)
    assert backend.finish([outcome], "w", backend.now()) == [True]


def events(queue: SkunkQueue) -> tuple[Any, Any]:
    @queue.event(routes=["foo"])
    def add(a: int, b: int) -> int:
        return a + b

    @queue.event(routes=["bar"])
    def other() -> None:
        return None

    return add, other


def test_retry_queues_a_failed_job_and_refuses_what_it_cannot(queue):
    add, _ = events(queue)
    handle = add.fire(1, 2)
    fail(queue, handle.id)
    again = queue.retry(handle.id)
    assert (again.id, again.state, again.attempts) == (handle.id, "queued", 1)
    with pytest.raises(JobNotRetryable, match="it is queued; only a job in error or cancelled"):
        queue.retry(handle.id)
    with pytest.raises(JobNotRetryable, match="no such job"):
        queue.retry("nope")
    with pytest.raises(TypeError):
        queue.retry(7)


def test_info_shows_everything_stored(queue):
    add, _ = events(queue)
    handle = add.fire(1, b=2)
    fail(queue, handle.id)
    queue.retry(handle.id)
    backend = queue.backend
    backend.claim(["foo"], "w", backend.now(), 30.0)
    backend.finish([Outcome(handle.id, "complete", result="3")], "w", backend.now())
    info = handle.info()
    assert isinstance(info, JobInfo)
    assert (info.state, info.args, info.kwargs, info.result) == ("complete", [1], {"b": 2}, 3)
    assert (info.attempts, info.deliveries, info.error, info.undecoded) == (2, 2, None, None)
    [earlier] = info.history
    assert (earlier["attempt"], earlier["state"], earlier["error"]) == (1, "error", ERR)
    for name in ("created_at", "eta", "started_at", "finished_at", "expires_at"):
        assert getattr(info, name).tzinfo is timezone.utc, name
    assert info.lease_until is None
    data = json.loads(json.dumps(info.to_dict()))
    assert data["history"][0]["finished_at"] == earlier["finished_at"].isoformat()
    assert earlier["finished_at"].tzinfo is timezone.utc
    assert data["finished_at"] == info.finished_at.isoformat()
    assert queue.get(handle.id).info() == info
    assert queue.handle("gone").info() is None


def test_info_decodes_pickle_only_where_it_was_opted_in_to(url):
    name = f"q{uuid.uuid4().hex[:10]}"
    trusting, plain = SkunkQueue(name, url=url), SkunkQueue(name, url=url)
    try:

        @trusting.event(routes=["foo"], serializer="pickle")
        def pickled(when: datetime) -> None:
            return None

        moment = datetime(2026, 1, 2, tzinfo=timezone.utc)
        handle = pickled.fire(moment)
        assert handle.info().args == [moment]
        seen = plain.handle(handle.id).info()
        assert (seen.args, seen.kwargs) == (None, None)
        assert seen.undecoded.startswith("pickled: not decoded")
        assert isinstance(json.dumps(seen.to_dict()), str)
    finally:
        trusting.close()
        plain.close()


def test_a_broadcast_handle_gives_the_info_of_each_copy(queue):
    add, _ = events(queue)
    copy = add.fire(1, 1)
    infos = BroadcastHandle(queue, "parent", [copy.id, "gone"]).info()
    assert [i and i.id for i in infos] == [copy.id, None]


def test_retry_all_retries_each_match_once_past_others_in_front(queue, monkeypatch):
    monkeypatch.setattr(queue_module, "RETRY_ALL_FIRST_PAGE", 3)
    add, other = events(queue)
    in_front = [other.fire() for _ in range(7)]  # listed first (earlier etas)
    for h in in_front:
        fail(queue, h.id, route="bar")
    wanted = [add.fire(i, i) for i in range(5)]
    for h in wanted:
        fail(queue, h.id)
    cancelled = add.fire_at(timedelta(hours=1), 0, 0)
    assert queue.cancel(cancelled.id)
    assert queue.retry_all(event=add.name) == 5
    assert {h.state for h in wanted} == {"queued"}
    assert {h.state for h in in_front} == {"error"}
    assert queue.retry_all(event=add.name) == 0
    assert queue.retry_all(state="cancelled", route="foo") == 1
    assert cancelled.state == "queued"
    assert queue.retry_all(route="bar") == 7


def test_retry_all_since_counts_finish_times(queue):
    add, _ = events(queue)
    early, late = add.fire(1, 1), add.fire(2, 2)
    fail(queue, early.id)
    backend = queue.backend
    cut = backend.now() + 0.01
    while backend.now() <= cut:
        time.sleep(0.002)  # pause: until the store's clock passes the cut, a few ms
    fail(queue, late.id)
    assert queue.retry_all(since=datetime.fromtimestamp(cut, timezone.utc)) == 1
    assert (early.state, late.state) == ("error", "queued")
    assert queue.retry_all(since=cut - 60) == 1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"state": "complete"}, ValueError, "state 'error' or 'cancelled'"),
        ({"state": "bogus"}, ValueError, "state 'error' or 'cancelled'"),
        ({"since": float("nan")}, ValueError, "since must be"),
        ({"since": "yesterday"}, ValueError, "since must be"),
        ({"event": 3}, TypeError, "event must be"),
        ({"route": ["a"]}, TypeError, "route must be"),
    ],
)
def test_retry_all_refuses_bad_arguments_before_any_write(queue, options, error, message):
    add, _ = events(queue)
    handle = add.fire(1, 1)
    fail(queue, handle.id)
    with pytest.raises(error, match=message):
        queue.retry_all(**options)
    assert handle.state == "error"


def test_a_sqlite_file_without_the_history_column_gets_it_at_open(tmp_path):
    """A file made by the previous version: its jobs read back, and finish and retry work."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(sqlite.SCHEMA.replace("    history TEXT,\n", ""))
    db.execute(
        "INSERT INTO sq_jobs (queue, id, event, route, payload, serializer, state, eta, "
        "created_at, attempts, deliveries, max_deliveries, result_ttl) "
        "VALUES ('q', 'old', 'e', 'r', '[[], {}]', 'json', 'queued', 1.0, 1.0, 0, 0, 3, 100.0)"
    )
    db.commit()
    db.close()
    backend = open_backend(f"sqlite:///{path}", "q")
    try:
        now = backend.now()
        assert backend.get("old", now).history is None
        backend.claim(["r"], "w", now, 30.0)
        backend.finish([Outcome("old", "error", error=ERR)], "w", now)
        assert backend.retry(["old"], now) == [True]
        assert backend.get("old", now).history[0]["error"] == ERR
    finally:
        backend.close()
