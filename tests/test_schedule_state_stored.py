"""A schedule's operational state outlives what the code changes: a redeploy (a new
expression or template) carries it over, and stores written before it existed read it as
empty (a SQLite file gets its column when it is opened; a Redis JSON without it)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import replace
from pathlib import Path

from skunkqueue import SkunkQueue
from skunkqueue.persistence import ScheduleRecord, open_backend


def define(queue: SkunkQueue, route: str, **schedule: object) -> None:
    @queue.event(routes=[route], name="tasks.report", **schedule)
    def report() -> None:
        return None


def test_a_redeploy_keeps_the_stored_state(url: str) -> None:
    name = f"q{uuid.uuid4().hex[:8]}"
    define(SkunkQueue(name, url=url), "reports", cron="0 3 * * *")
    backend = SkunkQueue(name, url=url).backend
    [stored] = backend.schedules()
    paused = {**stored.state, "paused": {"at": time.time(), "note": "partner API down"}}
    backend.save_schedule(replace(stored, state=paused), time.time())

    define(SkunkQueue(name, url=url), "elsewhere", cron="0 3 * * *")  # a new template
    define(SkunkQueue(name, url=url), "elsewhere", cron="*/5 * * * *")  # a new expression
    [after] = backend.schedules()
    assert (after.template["route"], after.spec["cron"]) == ("elsewhere", "*/5 * * * *")
    assert after.state == paused


OLD_SCHEDULES_TABLE = """
CREATE TABLE sq_schedules (
    queue TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, template TEXT NOT NULL,
    next_fire REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (queue, name)
)
"""


def test_a_sqlite_file_from_before_schedule_state_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEDULES_TABLE)
        db.execute(
            "INSERT INTO sq_schedules VALUES ('q', 'beat', ?, '{}', 100.0, 50.0)",
            (json.dumps({"every": 60.0}),),
        )
    backend = open_backend(f"sqlite:///{path}", "q")
    try:
        [old] = backend.schedules()
        assert (old.name, old.next_fire, old.state) == ("beat", 100.0, {})
        assert backend.save_schedule(replace(old, state={"paused": {"at": 1.0}}), 60.0)
        assert backend.schedules()[0].state == {"paused": {"at": 1.0}}
    finally:
        backend.close()
    # An older version's INSERT names its columns, so it still writes to the file.
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO sq_schedules VALUES ('q', 'other', '{}', '{}', 1.0, 1.0, NULL)")


def test_a_redis_schedule_stored_without_state_reads_as_empty(redis_server) -> None:
    name = f"q{uuid.uuid4().hex[:8]}"
    backend = open_backend(redis_server.url, name)
    try:
        backend.save_schedule(ScheduleRecord("beat", {"every": 60.0}, {}, 100.0, 50.0), 60.0)
        old = {"spec": {"every": 60.0}, "template": {}, "next_fire": 100.0, "updated_at": 50.0}
        backend._client.hset(backend._key("schedules"), "beat", json.dumps(old))
        assert backend.schedules()[0].state == {}
    finally:
        backend.close()
