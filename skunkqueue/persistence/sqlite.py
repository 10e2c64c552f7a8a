"""Embedded SQLite backend (``sqlite:///relative.db``, ``sqlite:////absolute.db``): the default.

One file serves many worker and scheduler processes on one machine: WAL journal, a busy
timeout, and ``BEGIN IMMEDIATE`` around every read-then-write so two writers never
interleave. Reads that only decide whether to write (is anything queued? is anything
due?) run outside the write lock, so idle processes do not queue up on it. Idle waiting
watches ``PRAGMA data_version``, which changes whenever another connection commits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..config import redact
from ..errors import BackendUnavailable, ConfigurationError
from ..model import JobRecord, JobState, Outcome
from .base import Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport, bounded_wait
from .rules import (
    MAX_BATCH,
    apply_outcome,
    bytes_cut,
    cancel,
    check_fence,
    expected_revision_holds,
    gate_open,
    payload_size,
    recover,
    release_held,
    retry,
    state_on_put,
    take,
    taken_lease,
    unchanged_since,
)

default_cfg: dict[str, Any] = {"backend": "sqlite", "conn_url": "skunkqueue.db", "dbname": None}

#: Seconds a call waits for another connection's write lock before it fails (``database is
#: locked``, ``BackendUnavailable``); a backend opened with a ``call_timeout`` waits less.
BUSY_TIMEOUT = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS sq_jobs (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    event TEXT NOT NULL,
    route TEXT NOT NULL,
    payload TEXT NOT NULL,
    serializer TEXT NOT NULL,
    state TEXT NOT NULL,
    eta REAL NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    max_deliveries INTEGER NOT NULL,
    owner TEXT,
    lease_until REAL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    result_ttl REAL NOT NULL,
    timeout REAL,
    retry TEXT,
    result TEXT,
    error TEXT,
    schedule TEXT,
    parent TEXT,
    concurrency INTEGER,
    history TEXT,
    UNIQUE (queue, id)
);
CREATE INDEX IF NOT EXISTS sq_jobs_ready ON sq_jobs (queue, state, route, eta, seq);
CREATE INDEX IF NOT EXISTS sq_jobs_due ON sq_jobs (queue, state, eta);
CREATE INDEX IF NOT EXISTS sq_jobs_lease ON sq_jobs (queue, state, lease_until);
CREATE INDEX IF NOT EXISTS sq_jobs_expiry ON sq_jobs (queue, expires_at)
    WHERE expires_at IS NOT NULL;
-- Concurrency limits (rules.gate_open): the jobs a claim held back, per event in the order
-- they go back. Their sq_jobs rows are 'parked' (out of the ready index, read as
-- 'queued'). A table of its own, not an index of sq_jobs: other jobs pay nothing for it.
CREATE TABLE IF NOT EXISTS sq_parked (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    event TEXT NOT NULL,
    eta REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sq_parked_order ON sq_parked (queue, event, eta, seq);
CREATE TABLE IF NOT EXISTS sq_leases (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    until REAL NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (queue, name)
);
CREATE TABLE IF NOT EXISTS sq_schedules (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    template TEXT NOT NULL,
    next_fire REAL NOT NULL,
    updated_at REAL NOT NULL,
    state TEXT,
    PRIMARY KEY (queue, name)
);
-- Each schedule name's last revision, kept apart from the schedule. A removed schedule's
-- revision stays, so its name stored again never reuses one. sq_schedules keeps the
-- shape older versions read and write (their rows read as revision 0).
-- (SCHEMA is split on semicolons: none may appear in these comments.)
CREATE TABLE IF NOT EXISTS sq_schedule_revisions (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
);
"""

#: JobRecord's fields, in its order: a row read with them is the record's arguments.
COLUMNS = [f.name for f in fields(JobRecord)]
# A job held back by its event's concurrency limit is stored 'parked' (out of the ready
# index) and read as what it is to everyone else: queued.
SELECT_JOB = "SELECT {} FROM sq_jobs".format(
    ", ".join(
        "CASE state WHEN 'parked' THEN 'queued' ELSE state END" if c == "state" else c
        for c in COLUMNS
    )
)
INSERT_COLUMNS = [c for c in COLUMNS if c != "seq"] + ["queue"]
JSON_COLUMNS = ("retry", "error", "history")
ALIVE = "(expires_at IS NULL OR expires_at > ?)"

INSERT_JOB = f"""
INSERT INTO sq_jobs ({", ".join(INSERT_COLUMNS)})
VALUES ({", ".join("?" for _ in INSERT_COLUMNS)})
ON CONFLICT (queue, id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in INSERT_COLUMNS if c not in ("queue", "id"))},
    seq = (SELECT MAX(seq) + 1 FROM sq_jobs)
WHERE sq_jobs.expires_at IS NOT NULL AND sq_jobs.expires_at <= ?
RETURNING seq
"""

#: The longest a reading of the file system's clock waits for its next tick (seconds).
CLOCK_TICK_WAIT = 0.05

#: The columns each verb's rule (rules.py) may change, written back by seq.
TAKEN = ("state", "owner", "lease_until", "started_at", "deliveries")
SETTLED = (
    "state",
    "owner",
    "lease_until",
    "deliveries",
    "attempts",
    "eta",
    "started_at",
    "result",
    "error",
    "finished_at",
    "expires_at",
    "history",
)
SETTLED_VALUES = attrgetter(*SETTLED)
CANCELLED = ("state", "error", "finished_at", "expires_at")
#: A running job cancelled also loses its holder and lease.
CANCELLED_RUNNING = (*CANCELLED, "owner", "lease_until")
#: What rules.retry changes; the seq is new as well (the back of the route's queue).
RETRIED = (
    "state",
    "eta",
    "error",
    "history",
    "result",
    "finished_at",
    "expires_at",
    "owner",
    "lease_until",
    "deliveries",
)


def _row_to_record(row: Sequence[Any]) -> JobRecord:
    record = JobRecord(*row)  # COLUMNS are JobRecord's fields, in order
    if record.retry is not None:
        record.retry = json.loads(record.retry)  # type: ignore[arg-type]
    if record.error is not None:
        record.error = json.loads(record.error)  # type: ignore[arg-type]
    if record.history is not None:
        record.history = json.loads(record.history)  # type: ignore[arg-type]
    return record


def _write_back(
    db: sqlite3.Connection, records: Sequence[JobRecord], columns: Sequence[str]
) -> None:
    """Store what a rule changed: ``columns`` of each record, by its seq."""
    if not records:
        return
    sql = f"UPDATE sq_jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE seq = ?"
    read = attrgetter(*columns, "seq")
    encoded = [i for i, column in enumerate(columns) if column in JSON_COLUMNS]
    rows = []
    for r in records:
        values = list(read(r))
        for i in encoded:
            if values[i] is not None:
                values[i] = json.dumps(values[i])
        rows.append(values)
    db.executemany(sql, rows)


def _write_changes(
    db: sqlite3.Connection,
    changed: Sequence[tuple[tuple[Any, ...], JobRecord]],
    columns: Sequence[str],
) -> None:
    """Store what a rule changed of each record, given its ``columns`` as they were read:
    only the columns whose value changed, so no index is rewritten for nothing."""
    read = attrgetter(*columns)
    groups: dict[tuple[str, ...], list[JobRecord]] = {}
    for before, r in changed:
        names = tuple(c for c, old, new in zip(columns, before, read(r), strict=True) if old != new)
        groups.setdefault(names, []).append(r)
    for names, records in groups.items():
        if names:
            _write_back(db, records, names)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _path_from_url(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URL {redact(url)!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"sqlite URL {redact(url)!r} names no file")
    return path, parse_qs(parts.query)


# SQLite's unix layer keeps process-wide locks (its list of open files has one mutex): a
# fork while another thread is inside a call leaves the child's first open waiting on a
# lock nobody in the child will release. A pool forks workers while its scheduler and
# hand-back threads use SQLite, so every connection's lock is held across a fork: no
# thread is inside SQLite then.
_live: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()
_opening = threading.RLock()
_held_across_fork: list[threading.RLock] = []


def _before_fork() -> None:
    _opening.acquire()
    locks = [backend._lock for backend in list(_live)]
    for lock in locks:
        lock.acquire()
    _held_across_fork[:] = locks


def _after_fork() -> None:
    for lock in reversed(_held_across_fork):
        lock.release()
    _held_across_fork.clear()
    _opening.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class SQLiteBackend(Backend):
    store_name = "SQLite"
    put_unit = "the whole call"
    unreachable = (sqlite3.OperationalError,)  # locked past the busy timeout, I/O, unopenable
    clock_source = "the clock of the file system holding the database"
    # A file's timestamp is the kernel's coarse clock: a tick (1 to 10 ms) behind.
    clock_tolerance = 0.02
    clock_attempts = 1  # a reading waits for a tick of the kernel's clock; once is enough

    def __init__(self, url: str, queue: str, *, call_timeout: float | None = None) -> None:
        super().__init__(url, queue, call_timeout=call_timeout)
        path, options = _path_from_url(url)
        synchronous = options.get("synchronous", ["NORMAL"])[0].upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(f"sqlite synchronous={synchronous!r} is not a SQLite setting")
        self.shared_across_processes = path != ":memory:"
        # Touched to read the time the kernel stamps on a file: every process using the
        # database agrees on it, whatever its own clock says (a shifted clock, a fake one).
        self._clock_file = None if path == ":memory:" else path + "-clock"
        self._lock = threading.RLock()
        busy = bounded_wait(BUSY_TIMEOUT, self.call_timeout)
        with _opening:
            try:
                self._db = sqlite3.connect(
                    path, timeout=busy, isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                self._db.execute(f"PRAGMA busy_timeout={max(1, round(busy * 1000))}")
                self._create_schema()
            except sqlite3.Error as exc:
                raise BackendUnavailable(
                    f"cannot open SQLite database {redact(url)!r}: {exc}"
                ) from exc
            _live.add(self)
        self._data_version = self._version()

    def _store_time(self) -> float:
        """The kernel's time, as it stamps a file it is told to touch. That clock is coarse
        (it moves once a tick, 1 to 10 ms): touching until the stamp moves catches the
        tick itself, so the reading is the time of that moment, microseconds old."""
        if self._clock_file is None:
            return time.time()
        path = self._clock_file
        try:
            with open(path, "ab"):
                pass
            os.utime(path)
            first = os.stat(path).st_mtime_ns
            give_up = time.monotonic() + CLOCK_TICK_WAIT
            while time.monotonic() < give_up:
                os.utime(path)
                stamp = os.stat(path).st_mtime_ns
                if stamp != first:
                    return stamp / 1e9
            return first / 1e9  # a stopped clock (a fake one): behind, never ahead
        except OSError:  # a folder this process may not write to: its own clock, then
            return time.time()

    def _create_schema(self) -> None:
        with self._write() as db:
            # A file made by an earlier version gets the columns added since, before the
            # schema's indexes (some name them) are created.
            _add_missing_columns(db)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so no read inside it goes stale."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _version(self) -> int:
        return self._read("PRAGMA data_version")[0][0]

    # -- jobs ---------------------------------------------------------------------

    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """The whole call is one unit: one write transaction, rolled back on any error
        (a full disk, a record that cannot be encoded)."""
        with self._write() as db:
            return self._insert_jobs(db, jobs, now)

    def _insert_jobs(
        self, db: sqlite3.Connection, jobs: Sequence[JobRecord], now: float
    ) -> list[bool]:
        """``put``'s writes, inside the caller's write transaction."""
        answers = []
        for job in jobs:
            data = job.to_dict()
            data["state"] = state_on_put(job, now)
            for column in JSON_COLUMNS:
                if data[column] is not None:
                    data[column] = json.dumps(data[column])
            data["queue"] = self.queue
            params = [data[c] for c in INSERT_COLUMNS] + [now]
            answers.append(db.execute(INSERT_JOB, params).fetchone() is not None)
        return answers

    def _get(self, job_id: str, now: float) -> JobRecord | None:
        rows = self._read(
            f"{SELECT_JOB} WHERE queue = ? AND id = ? AND {ALIVE}", (self.queue, job_id, now)
        )
        return _row_to_record(rows[0]) if rows else None

    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        sql = f"{SELECT_JOB} WHERE queue = ? AND {ALIVE}"
        params: list[Any] = [self.queue, now]
        if state == JobState.QUEUED:
            sql += " AND state IN ('queued', 'parked')"
        elif state is not None:
            sql += " AND state = ?"
            params.append(state)
        if route is not None:
            sql += " AND route = ?"
            params.append(route)
        sql += " ORDER BY eta, seq LIMIT ?"
        params.append(limit)
        return [_row_to_record(r) for r in self._read(sql, params)]

    def _stats(self, now: float) -> Stats:
        rows = self._read(
            f"SELECT state, route, COUNT(*) FROM sq_jobs WHERE queue = ? AND {ALIVE} GROUP BY state, route",
            (self.queue, now),
        )
        due = self._read(
            "SELECT MIN(eta) FROM sq_jobs WHERE queue = ? AND state IN ('scheduled', 'retrying')",
            (self.queue,),
        )
        counts: dict[tuple[str, str], int] = {}
        for state, route, n in rows:
            key = ("queued" if state == "parked" else state, route)
            counts[key] = counts.get(key, 0) + n
        return Stats(counts=counts, next_due=due[0][0])

    def _claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        routes = list(dict.fromkeys(routes))
        marks = ", ".join("?" for _ in routes)
        probe = f"SELECT 1 FROM sq_jobs WHERE queue = ? AND state = 'queued' AND route IN ({marks}) LIMIT 1"
        if not self._read(probe, [self.queue, *routes]):
            return []
        # Without a bound the candidates come from the index alone; the payload's UTF-8
        # length (a BLOB's length is its bytes) needs each candidate's row.
        size = "0" if max_bytes is None else "length(CAST(payload AS BLOB))"
        with self._write() as db:
            candidates: list[tuple[float, int, int]] = []
            for route in routes:
                candidates += db.execute(
                    f"SELECT eta, seq, {size} FROM sq_jobs WHERE queue = ? AND state = 'queued' "
                    "AND route = ? ORDER BY eta, seq LIMIT ?",
                    (self.queue, route, limit),
                ).fetchall()
            first = sorted(candidates)[:limit]
            chosen = [seq for _, seq, _ in first[: bytes_cut((n for _, _, n in first), max_bytes)]]
            if not chosen:
                return []
            rows = db.execute(f"{SELECT_JOB} WHERE seq IN ({_marks(chosen)})", chosen).fetchall()
            taken = sorted((_row_to_record(r) for r in rows), key=lambda r: (r.eta, r.seq))
            if any(r.concurrency is not None for r in taken):
                return self._claim_gated(db, routes, owner, now, lease, limit, max_bytes)
            for r in taken:
                take(r, owner, now, lease)
            _write_back(db, taken, TAKEN)
        return taken

    def _claim_gated(
        self,
        db: sqlite3.Connection,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int,
        max_bytes: int | None,
    ) -> list[JobRecord]:
        """The claim when a job with a concurrency limit is among the first: in rounds,
        each taking what the limits let through and holding back (state 'parked') what
        they refuse, until the batch is full, the queues run out, ``max_bytes`` cuts, or
        MAX_BATCH jobs were held back. Each round writes back, so the next one's query
        sees neither the jobs taken nor the ones held back."""
        running: dict[str, int] = {}  # per event looked up: running in the store + taken
        taken: list[JobRecord] = []
        used, held = 0, 0
        while len(taken) < limit and held < MAX_BATCH:
            want = limit - len(taken)
            candidates: list[tuple[float, int, int]] = []
            for route in routes:
                candidates += db.execute(
                    "SELECT eta, seq, length(CAST(payload AS BLOB)) FROM sq_jobs "
                    "WHERE queue = ? AND state = 'queued' AND route = ? ORDER BY eta, seq LIMIT ?",
                    (self.queue, route, want),
                ).fetchall()
            first = sorted(candidates)[:want]
            fits = bytes_cut((n for _, _, n in first), max_bytes, len(taken), used)
            chosen = [seq for _, seq, _ in first[:fits]]
            if not chosen:
                break
            rows = db.execute(f"{SELECT_JOB} WHERE seq IN ({_marks(chosen)})", chosen).fetchall()
            now_taken, parked = [], []
            for r in sorted((_row_to_record(r) for r in rows), key=lambda r: (r.eta, r.seq)):
                if r.concurrency is not None and r.event not in running:
                    # Rows taken in this round are not written yet: count them too.
                    running[r.event] = self._running_count(db, r.event) + sum(
                        1 for t in now_taken if t.event == r.event
                    )
                if gate_open(r, running.get(r.event, 0)):
                    take(r, owner, now, lease)
                    now_taken.append(r)
                    used += payload_size(r.payload)
                    if r.event in running:
                        running[r.event] += 1
                elif held < MAX_BATCH:
                    parked.append(r.seq)
                    held += 1
            _write_back(db, now_taken, TAKEN)
            if parked:
                db.execute(
                    f"UPDATE sq_jobs SET state = 'parked' WHERE seq IN ({_marks(parked)})", parked
                )
                db.execute(
                    "INSERT INTO sq_parked (queue, event, eta, seq) SELECT queue, event, eta, "
                    f"seq FROM sq_jobs WHERE seq IN ({_marks(parked)})",
                    parked,
                )
            taken += now_taken
            if not parked and (fits < len(first) or len(first) < want):
                break  # cut by max_bytes, or the queues ran out
        return sorted(taken, key=lambda r: (r.eta, r.seq))

    def _running_count(self, db: sqlite3.Connection, event: str) -> int:
        """Running jobs of ``event``: a walk of the queue's running jobs (an index by
        state), read only by a claim that meets a job with a limit. Bounded by how many
        jobs run at once, and no index is kept up for it on every job's claim and finish."""
        return db.execute(
            "SELECT COUNT(*) FROM sq_jobs WHERE queue = ? AND event = ? AND state = 'running'",
            (self.queue, event),
        ).fetchone()[0]

    def _unpark(self, db: sqlite3.Connection, events: Sequence[str]) -> None:
        """Jobs of ``events`` (one name per job) left ``running``, or a queued job with a
        limit was cancelled: as many held-back jobs of each event, first in (eta, seq)
        order, go back to their queues. One probe of sq_parked, empty unless some job is
        held back, so jobs without limits pay almost nothing."""
        probe = "SELECT 1 FROM sq_parked WHERE queue = ? LIMIT 1"
        if not events or not db.execute(probe, (self.queue,)).fetchone():
            return
        for event, n in Counter(events).items():
            heads = [
                row[0]
                for row in db.execute(
                    "SELECT seq FROM sq_parked WHERE queue = ? AND event = ? "
                    "ORDER BY eta, seq LIMIT ?",
                    (self.queue, event, n),
                )
            ]
            if heads:
                marks = _marks(heads)
                db.execute(f"DELETE FROM sq_parked WHERE seq IN ({marks})", heads)
                db.execute(
                    f"UPDATE sq_jobs SET state = 'queued' WHERE seq IN ({marks}) "
                    "AND state = 'parked'",
                    heads,
                )

    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        sql = (
            "UPDATE sq_jobs SET lease_until = ? WHERE queue = ? AND state = 'running' AND owner = ?"
        )
        params: list[Any] = [now + lease, self.queue, owner]
        if job_ids is not None:
            if not job_ids:
                return set()
            sql += f" AND id IN ({', '.join('?' for _ in job_ids)})"
            params += list(job_ids)
        with self._write() as db:
            return {row[0] for row in db.execute(sql + " RETURNING id", params)}

    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        ids = list({o.job_id: None for o in outcomes})
        answers = []
        with self._write() as db:
            held = {
                r.id: r
                for r in map(
                    _row_to_record,
                    db.execute(
                        f"{SELECT_JOB} WHERE queue = ? AND id IN ({_marks(ids)}) "
                        "AND state = 'running' AND owner = ?",
                        [self.queue, *ids, owner],
                    ),
                )
            }
            settled = []
            for outcome in outcomes:
                r = held.pop(outcome.job_id, None)  # an id's second outcome finds it settled
                answers.append(r is not None)
                if r is not None:
                    settled.append((SETTLED_VALUES(r), r))
                    apply_outcome(r, outcome, now)
            _write_changes(db, settled, SETTLED)
            self._unpark(db, [r.event for _, r in settled])
        return answers

    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """No index by owner: each transaction walks the queue's running jobs (the lease
        index) for the owner's, and hands back up to MAX_BATCH of them; transactions
        follow until none is left."""
        begun = set(started)
        released: dict[str, str] = {}
        while True:
            with self._write() as db:
                rows = db.execute(
                    f"{SELECT_JOB} WHERE queue = ? AND state = 'running' AND owner = ? LIMIT ?",
                    (self.queue, owner, MAX_BATCH),
                ).fetchall()
                for row in rows:
                    r = _row_to_record(row)
                    release_held(r, begun, now)
                    db.execute(
                        "UPDATE sq_jobs SET state = ?, owner = NULL, lease_until = NULL, "
                        "deliveries = ?, error = ?, finished_at = ?, expires_at = ? WHERE seq = ?",
                        (
                            r.state,
                            r.deliveries,
                            None if r.error is None else json.dumps(r.error),
                            r.finished_at,
                            r.expires_at,
                            r.seq,
                        ),
                    )
                    released[r.id] = r.state
                self._unpark(db, [row[COLUMNS.index("event")] for row in rows])
            if len(rows) < MAX_BATCH:
                return released

    def _records_by_id(self, db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, JobRecord]:
        """The stored records of ``ids`` (each id once), by id."""
        rows = db.execute(
            f"{SELECT_JOB} WHERE queue = ? AND id IN ({_marks(ids)})", [self.queue, *ids]
        )
        return {r.id: r for r in map(_row_to_record, rows)}

    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]:
        ids = list(dict.fromkeys(job_ids))
        with self._write() as db:
            found = self._records_by_id(db, ids)
            answers, cancelled, gated, stopped = [], [], [], []
            for job_id in job_ids:
                r = found.get(job_id)
                was = r.state if r is not None else None
                answers.append(r is not None and cancel(r, now, reason, running))
                if answers[-1]:
                    cancelled.append(r)
                    if was == JobState.QUEUED and r.concurrency is not None:
                        gated.append(r)
                    elif was == JobState.RUNNING:
                        stopped.append(r.event)
            _write_back(db, cancelled, CANCELLED_RUNNING if running else CANCELLED)
            if gated:  # held back or not: out of sq_parked, and the next one let through
                seqs = [r.seq for r in gated]
                db.execute(f"DELETE FROM sq_parked WHERE seq IN ({_marks(seqs)})", seqs)
            if gated or stopped:  # a running job cancelled frees a slot of its event too
                self._unpark(db, [r.event for r in gated] + stopped)
        return answers

    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        ids = list(dict.fromkeys(job_ids))
        sql = (
            f"UPDATE sq_jobs SET {', '.join(f'{c} = ?' for c in RETRIED)}, "
            "seq = (SELECT MAX(seq) + 1 FROM sq_jobs) WHERE seq = ?"
        )
        with self._write() as db:
            found = self._records_by_id(db, ids)
            answers = []
            for job_id in job_ids:
                r = found.pop(job_id, None)  # an id given twice is retried once
                answers.append(r is not None and retry(r, now))
                if answers[-1]:
                    values = [getattr(r, c) for c in RETRIED]
                    encoded = [
                        json.dumps(v) if c in JSON_COLUMNS and v is not None else v
                        for c, v in zip(RETRIED, values, strict=True)
                    ]
                    db.execute(sql, [*encoded, r.seq])
        return answers

    def _pending(self, db: sqlite3.Connection) -> tuple[float | None, float | None, float | None]:
        """Earliest waiting eta, earliest running lease expiry, earliest record expiry."""
        return db.execute(
            "SELECT (SELECT MIN(eta) FROM sq_jobs WHERE queue = :q AND state = 'scheduled'),"
            " (SELECT MIN(eta) FROM sq_jobs WHERE queue = :q AND state = 'retrying'),"
            " (SELECT MIN(lease_until) FROM sq_jobs WHERE queue = :q AND state = 'running'),"
            " (SELECT MIN(expires_at) FROM sq_jobs WHERE queue = :q AND expires_at IS NOT NULL)",
            {"q": self.queue},
        ).fetchone()

    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:
        with self._lock:
            scheduled, retrying, lease_end, expiry = self._pending(self._db)
            self._check_fence(self._db, fence, now)
        etas = [t for t in (scheduled, retrying) if t is not None]
        if not any(t is not None and t <= now for t in (*etas, expiry)) and not (
            lease_end is not None and lease_end < now
        ):
            return SweepReport(next_due=min([*etas, lease_end], key=_inf_if_none, default=None))
        report = SweepReport()
        with self._write() as db:
            self._check_fence(db, fence, now)
            report.promoted = db.execute(
                "UPDATE sq_jobs SET state = 'queued' WHERE seq IN (SELECT seq FROM sq_jobs "
                "WHERE queue = ? AND state IN ('scheduled', 'retrying') AND eta <= ? ORDER BY eta, seq LIMIT ?)",
                (self.queue, now, limit),
            ).rowcount
            lapsed = [
                _row_to_record(row)
                for row in db.execute(
                    f"{SELECT_JOB} WHERE queue = ? AND state = 'running' AND lease_until < ? LIMIT ?",
                    (self.queue, now, limit),
                )
            ]
            for r in lapsed:
                recover(r, now)
                if r.state == JobState.ERROR:
                    report.failed += 1
                else:
                    report.recovered += 1
            _write_back(db, lapsed, SETTLED)
            self._unpark(db, [r.event for r in lapsed])
            report.expired = db.execute(
                "DELETE FROM sq_jobs WHERE seq IN (SELECT seq FROM sq_jobs WHERE queue = ? "
                "AND expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                (self.queue, now, limit),
            ).rowcount
            scheduled, retrying, lease_end, _ = self._pending(db)
        report.more = max(report.promoted, len(lapsed), report.expired) >= limit
        report.next_due = min([scheduled, retrying, lease_end], key=_inf_if_none, default=None)
        return report

    # -- leases -------------------------------------------------------------------

    def _lease(self, db: sqlite3.Connection, name: str) -> Lease | None:
        row = db.execute(
            "SELECT owner, token, until, info FROM sq_leases WHERE queue = ? AND name = ?",
            (self.queue, name),
        ).fetchone()
        return None if row is None else Lease(name, row[0], row[1], row[2], json.loads(row[3]))

    def _check_fence(self, db: sqlite3.Connection, fence: Fence, now: float) -> None:
        check_fence(self._lease(db, fence.name), fence, now)

    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        with self._write() as db:
            lease = taken_lease(self._lease(db, name), name, owner, now, ttl, info or {})
            if lease is None:
                return None
            db.execute(
                "INSERT OR REPLACE INTO sq_leases (queue, name, owner, token, until, info) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.queue, name, owner, lease.token, lease.until, json.dumps(lease.info)),
            )
        return lease

    def _release_lease(self, name: str, owner: str) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE sq_leases SET owner = '', until = 0, info = '{}' "
                    "WHERE queue = ? AND name = ? AND owner = ?",
                    (self.queue, name, owner),
                ).rowcount
                == 1
            )

    def _leases(self, prefix: str, now: float) -> list[Lease]:
        rows = self._read(
            "SELECT name, owner, token, until, info FROM sq_leases WHERE queue = ? "
            "AND substr(name, 1, ?) = ? AND owner != '' AND until >= ? ORDER BY name",
            (self.queue, len(prefix), prefix, now),
        )
        return [Lease(n, o, t, u, json.loads(i)) for n, o, t, u, i in rows]

    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM sq_leases WHERE rowid IN (SELECT rowid FROM sq_leases "
                "WHERE queue = ? AND substr(name, 1, ?) = ? AND until < ? LIMIT ?)",
                (self.queue, len(prefix), prefix, before, limit),
            ).rowcount

    # -- schedules ----------------------------------------------------------------

    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool:
        with self._write() as db:
            if fence is not None:
                self._check_fence(db, fence, now)
            if not expected_revision_holds(
                self._stored_revision(db, schedule.name), expected_revision
            ):
                return False
            db.execute(
                "INSERT OR REPLACE INTO sq_schedules "
                "(queue, name, spec, template, next_fire, updated_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.queue,
                    schedule.name,
                    json.dumps(schedule.spec),
                    json.dumps(schedule.template),
                    schedule.next_fire,
                    schedule.updated_at,
                    json.dumps(schedule.state),
                ),
            )
            self._next_revision(db, schedule.name)
        return True

    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool:
        with self._write() as db:
            self._check_fence(db, fence, now)
            if not unchanged_since(self._stored_revision(db, read.name), read.revision):
                return False
            self._insert_jobs(db, jobs, now)
            db.execute(
                "UPDATE sq_schedules SET next_fire = ?, updated_at = ? WHERE queue = ? AND name = ?",
                (next_fire, now, self.queue, read.name),
            )
            if state is not None:
                db.execute(
                    "UPDATE sq_schedules SET state = ? WHERE queue = ? AND name = ?",
                    (json.dumps(state), self.queue, read.name),
                )
            self._next_revision(db, read.name)
        return True

    def _stored_revision(self, db: sqlite3.Connection, name: str) -> int | None:
        """The revision of the stored schedule ``name``, or ``None`` if there is none."""
        row = db.execute(
            "SELECT COALESCE(r.revision, 0) FROM sq_schedules s LEFT JOIN sq_schedule_revisions r "
            "ON r.queue = s.queue AND r.name = s.name WHERE s.queue = ? AND s.name = ?",
            (self.queue, name),
        ).fetchone()
        return None if row is None else row[0]

    def _next_revision(self, db: sqlite3.Connection, name: str) -> None:
        db.execute(
            "INSERT INTO sq_schedule_revisions (queue, name, revision) VALUES (?, ?, 1) "
            "ON CONFLICT (queue, name) DO UPDATE SET revision = revision + 1",
            (self.queue, name),
        )

    def _schedules(self) -> list[ScheduleRecord]:
        rows = self._read(
            "SELECT s.name, s.spec, s.template, s.next_fire, s.updated_at, "
            "COALESCE(r.revision, 0), s.state FROM sq_schedules s LEFT JOIN sq_schedule_revisions r "
            "ON r.queue = s.queue AND r.name = s.name WHERE s.queue = ? ORDER BY s.name",
            (self.queue,),
        )
        return [
            ScheduleRecord(n, json.loads(s), json.loads(t), f, u, v, json.loads(st or "{}"))
            for n, s, t, f, u, v, st in rows
        ]

    def _remove_schedule(self, name: str) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "DELETE FROM sq_schedules WHERE queue = ? AND name = ?", (self.queue, name)
                ).rowcount
                == 1
            )

    # -- waiting ------------------------------------------------------------------

    wake_mode = "SQLite data_version, read every 2 ms"

    def _wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        self._began_waiting()  # any change since the last wait is seen from here on
        while True:
            version = self._version()
            if version != self._data_version:
                self._data_version = version
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.002, remaining))

    def close(self) -> None:
        with self._lock:
            self._db.close()


#: Columns added after a table's first release: (table, column, declaration). A file made
#: by an older version gets them when it is opened (NULL in its rows: older versions'
#: INSERTs name their columns, so they keep working on the file too).
ADDED_COLUMNS = [
    ("sq_jobs", "concurrency", "INTEGER"),
    ("sq_jobs", "history", "TEXT"),
    ("sq_schedules", "state", "TEXT"),
]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, declaration in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if present and column not in present:  # (no columns: the table is yet to be made)
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _inf_if_none(value: float | None) -> float:
    return float("inf") if value is None else value
