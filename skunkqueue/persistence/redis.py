"""Redis backend: every atomic step is one Lua script, every index a sorted set.

URLs (redis-py parses them; query options such as ``?socket_timeout=5`` are passed on):

* ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock?db=0``
* ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and ``rediss+cluster://...``:
  a Redis Cluster, discovered from the first reachable seed (db 0 only).
* The seed form ``SkunkQueue('demo', **default_cfg)`` means ``redis://localhost:6379/0``.

Key layout. Every key of queue ``demo`` starts with ``sq:{demo}:``; the braces are a hash
tag, so all of a queue's keys live in one cluster slot and every script runs unchanged
on Redis Cluster. ``redis_scripts/_common.lua`` documents each key and the job record's
short field names; in brief: ``j:<id>`` HASH job record (fields equal to the JobRecord
defaults are not stored), ``scheduled`` ZSET (scheduled and retrying, by eta),
``ready:<route>`` ZSET (queued, by eta then put order), ``running`` ZSET (by lease end),
``expiry`` ZSET (records with an expiry), ``held:<owner>`` SET, ``counts`` HASH per
(state, route), ``seq``, ``wake:<route>`` LIST (one token), ``lease:<name>`` HASH plus
the ``leases`` ZSET of names, ``schedules`` HASH (name -> JSON), ``schedrev`` HASH
(name -> revision; kept when a schedule is removed, and apart from its JSON, which no
script decodes) and ``quarantine`` ZSET (records a script found malformed and set aside,
never writing them: see _common.lua).

Waiting without polling. A script that makes a job ready on a route leaves a token on
``wake:<route>``; an idle worker blocks in BLPOP on its routes' tokens (in a background
connection, so its own timeout stays precise to the millisecond), and a claim that
leaves jobs behind passes the token on to the next idle worker. Anything that moves the
scheduler's next due time earlier (an earlier eta, a retry, a shortened lease, a
released scheduler lease) PUBLISHes on ``sq:{demo}:wake:scheduler``, which every
scheduler, leader and standbys alike, is subscribed to.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` a job whose
``fire()`` returned survives a crash of Redis; with ``appendfsync everysec`` up to about
a second of acknowledged writes (fires, claims, outcomes) can be lost in a crash of the
Redis host (not of Redis alone: the OS still has the data); without persistence a
restart loses every job. Lost claims and outcomes show up as redeliveries, never as
lost jobs, as long as the fire itself is kept.

Outgrowing one Redis: a queue lives in one slot, so one queue is served by one Redis
node. Spread load by spreading queues: run a Redis Cluster (``redis+cluster://``), and
the queues' hash tags place them on different masters; ``CLUSTER KEYSLOT 'sq:{name}:'``
tells where one goes, and resharding moves a queue with its slot.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import redact
from ..errors import BackendUnavailable, ConfigurationError, LeaseLost
from ..model import JobRecord, JobState, Outcome
from .base import SCHEDULER_LEASE, Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport
from .redis_support import (
    DEFAULTS,
    JOB_SCRIPTS,
    OTHER_SCRIPTS,
    RouteListener,
    SchedulerListener,
    ScriptCall,
    ScriptLane,
    blocking_client,
    connect,
    decode_record,
    encode_record,
    number,
    script_text,
    server_version,
    takes_script_flags,
)
from .rules import MAX_BATCH, fired_state, state_on_put

log = logging.getLogger("skunkqueue.redis")

default_cfg: dict[str, Any] = {"backend": "redis", "conn_url": "localhost:6379", "dbname": 0}

#: Jobs per put script call (about 1 ms of Redis time). A larger batch is written in
#: several pipelined calls: Redis serves other clients in between, and stores one chunk
#: while the producer encodes the next (see ``put``).
PUT_CHUNK = 100
#: Records read per round trip when list_jobs walks an index.
PAGE = 200
#: States with an index of their own; list_jobs reads the expiry index for the others.
INDEXED_BY_STATE = ("scheduled", "retrying", "queued", "running")
#: How many passed-over records one warning names; it counts the rest.
NAMED_IN_WARNING = 20


def names_with_prefix(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the names that start with ``prefix``."""
    if not prefix:
        return b"-", b"+"
    # Byte 0xff never occurs in UTF-8, so it closes the range of names with the prefix.
    return b"[" + prefix.encode(), b"(" + prefix.encode() + b"\xff"


class RedisBackend(Backend):
    """One queue on a Redis server or cluster (see the module docstring for the layout)."""

    store_name = "Redis"
    put_unit = f"{PUT_CHUNK} jobs"
    clock_source = "the Redis server's clock (TIME, on the node of the queue's slot)"

    wake_mode = "BLPOP on the routes' wake lists; Pub/Sub for schedulers"

    def __init__(self, url: str, queue: str, *, call_timeout: float | None = None) -> None:
        super().__init__(url, queue, call_timeout=call_timeout)
        if "{" in queue or "}" in queue:
            raise ConfigurationError(f"queue name {queue!r} may not contain braces")
        try:
            import redis
        except ImportError as exc:
            raise ImportError(
                "the Redis backend needs redis-py: pip install 'skunkqueue[redis]'"
            ) from exc
        self.unreachable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._response_error = redis.exceptions.ResponseError
        self._out_of_memory = redis.exceptions.OutOfMemoryError
        try:
            # A cluster client asks for the slot map here.
            self._client = connect(url, self.call_timeout)
        except ConfigurationError:
            raise
        except ValueError as exc:  # redis-py's word for a malformed URL
            raise ConfigurationError(f"Redis URL {redact(url)!r}: {exc}") from None
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {redact(url)!r}: {exc}") from exc
        try:
            self._client.ping()  # the server answers now, or the caller hears it now
        except (redis.exceptions.RedisError, OSError) as exc:
            self._client.close()
            raise BackendUnavailable(f"cannot reach Redis at {redact(url)!r}: {exc}") from exc
        p = self._prefix = f"sq:{{{queue}}}:"
        self._job_keys = [p, p + "counts", p + "scheduled", p + "running", p + "expiry", p + "seq"]
        # Each script declares its flags ('#!lua flags=...'), which Redis 7 reads once at the
        # start of a call: a writing script is refused whole while Redis is out of memory.
        # An older server cannot parse the line, so its scripts go without it.
        try:
            flags = takes_script_flags(server_version(self._client, p))
        except (redis.exceptions.RedisError, OSError) as exc:
            self._client.close()
            raise BackendUnavailable(f"cannot reach Redis at {redact(url)!r}: {exc}") from exc
        # register_script sends nothing: EVALSHA first, SCRIPT LOAD on NOSCRIPT (a fresh
        # or restarted server, SCRIPT FLUSH), then EVALSHA again.
        self._scripts = {
            name: self._client.register_script(script_text(name, flags))
            for name in JOB_SCRIPTS + OTHER_SCRIPTS
        }
        # A cluster client routes each call by key itself; on one server, the lane.
        self._lane = (
            None
            if hasattr(self._client, "get_node_from_key")
            else ScriptLane(self._client, resend_after_timeout=self.call_timeout is None)
        )
        self._listeners: dict[tuple[str, ...] | None, RouteListener | SchedulerListener] = {}
        self._listeners_lock = threading.Lock()
        self._closed = False

    # -- plumbing -----------------------------------------------------------------

    def _run(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        return self._run_many([(self._scripts[name], keys, args)])[0]

    def _run_many(self, calls: Iterable[ScriptCall]) -> list[Any]:
        """Script calls in order (a generator's are made as they are sent), pipelined where
        the lane can; their replies. A script refused because Redis is out of memory
        (``maxmemory`` reached under ``noeviction``) wrote nothing; the store cannot take
        writes, which is ``BackendUnavailable``, as a full disk is for SQLite."""
        try:
            if self._lane is not None:
                return self._lane.run(calls)
            return [script(keys=keys, args=args) for script, keys, args in calls]
        except self._response_error as exc:
            if str(exc).startswith("SQ_LEASE_LOST"):
                raise LeaseLost(f"{exc} ({self.queue})") from None
            # Redis 7 replies OOM, which redis-py raises as OutOfMemoryError; Redis 6.2
            # wraps it in a script error ("ERR Error running script ...: -OOM command
            # not allowed ..."), which only the text tells apart.
            if isinstance(exc, self._out_of_memory) or "OOM command not allowed" in str(exc):
                raise BackendUnavailable(
                    f"{self.store_name} at {redact(self.url)!r} cannot take writes: {exc}"
                ) from exc
            raise

    def _store_time(self) -> float:
        seconds, micros = self._run("time", [self._prefix], [])
        return int(seconds) + int(micros) / 1e6

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}{name}"

    def _passed_over(self, verb: str, names_and_reasons: Sequence[str]) -> int:
        """Log at WARNING what a script could not act on (a record missing or malformed,
        named by its key under the queue's prefix, with the reason); how many. The scripts
        never write such a record, and keep malformed ones in ``quarantine``."""
        pairs = list(zip(names_and_reasons[::2], names_and_reasons[1::2], strict=True))
        if pairs:
            named = "; ".join(f"{name}: {why}" for name, why in pairs[:NAMED_IN_WARNING])
            log.warning(
                "Redis %s on queue %r passed over %d record(s) it could not act on, "
                "writing none of them (malformed ones are listed in %squarantine): %s%s",
                verb,
                self.queue,
                len(pairs),
                self._prefix,
                named,
                f"; and {len(pairs) - NAMED_IN_WARNING} more"
                if len(pairs) > NAMED_IN_WARNING
                else "",
            )
        return len(pairs)

    def _fetch(self, ids: Sequence[str]) -> list[JobRecord]:
        """Records by id, in order, leaving out ids that have no record (deleted)."""
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key("j:", job_id))
        rows = pipe.execute()
        return [decode_record(i, row) for i, row in zip(ids, rows, strict=True) if row]

    # -- jobs ---------------------------------------------------------------------

    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """The unit is PUT_CHUNK jobs, one script call each: pipelined on one server
        (Redis stores one chunk while the next is encoded), one after another on a
        cluster. A record that cannot be encoded raises with the chunks before its own
        written; so may a lost connection. A chunk Redis refuses (out of memory) is not
        written: on a cluster no later chunk is sent, on one server the later chunks are
        already sent and each is stored if Redis can take it. Sending the same ids again
        completes such a batch."""
        script, keys = self._scripts["put"], self._job_keys
        calls = (
            (script, keys, self._put_args(jobs[start : start + PUT_CHUNK], now))
            for start in range(0, len(jobs), PUT_CHUNK)
        )
        answers: list[bool] = []
        for reply, passed in self._run_many(calls):
            self._passed_over("put", passed)
            answers += map(bool, reply)
        return answers

    @staticmethod
    def _put_args(chunk: Sequence[JobRecord], now: float) -> list[str]:
        args = [number(now), str(len(chunk))]
        for job in chunk:
            fields = encode_record(job, state_on_put(job, now))
            expires = "" if job.expires_at is None else number(job.expires_at)
            args += (job.id, expires, str(len(fields)))
            args += fields
        return args

    def _get(self, job_id: str, now: float) -> JobRecord | None:
        fields = self._client.hgetall(self._key("j:", job_id))
        if not fields:
            return None
        record = decode_record(job_id, fields)
        return None if record.expires_at is not None and record.expires_at <= now else record

    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Walks the eta-ordered indexes (scheduled, ready) only as far as ``limit``
        matches; running and finished records are not indexed by eta, so asking for them
        (or for every state) reads all of them."""
        if limit <= 0:
            return []
        found: dict[str, JobRecord] = {}

        def wanted(r: JobRecord) -> bool:
            return (
                (r.expires_at is None or r.expires_at > now)
                and (state is None or r.state == state)
                and (route is None or r.route == route)
            )

        ordered = []
        if state in (None, JobState.SCHEDULED, JobState.RETRYING):
            ordered.append(self._key("scheduled"))
        if state in (None, JobState.QUEUED):
            routes = [route] if route is not None else self._routes_with(JobState.QUEUED)
            ordered += [self._key("ready:", r) for r in routes]
            ordered += self._parked_keys()
        for key in ordered:
            self._walk(key, limit, wanted, found)
        unordered = []
        if state in (None, JobState.RUNNING):
            unordered.append(self._key("running"))
        if state not in INDEXED_BY_STATE:
            unordered.append(self._key("expiry"))
        for key in unordered:
            ids = self._client.zrange(key, 0, -1)
            for start in range(0, len(ids), PAGE):
                for record in self._fetch(ids[start : start + PAGE]):
                    if wanted(record):
                        found[record.id] = record
        return sorted(found.values(), key=lambda r: (r.eta, r.seq))[:limit]

    def _parked_keys(self) -> list[str]:
        """The ``parked:<event>`` sets of queued jobs held back by a concurrency limit
        (found by SCAN: listings are not a hot path, and claims never look here)."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._key("parked:")) + "*"
        return sorted(
            k if isinstance(k, str) else k.decode() for k in self._client.scan_iter(match=pattern)
        )

    def _walk(
        self,
        key: str,
        limit: int,
        wanted: Callable[[JobRecord], bool],
        found: dict[str, JobRecord],
    ) -> None:
        """Add the first ``limit`` wanted records of an index ordered by (eta, seq)."""
        matched, start = 0, 0
        while matched < limit:
            members = self._client.zrange(key, start, start + PAGE - 1)
            if not members:
                return
            start += len(members)
            for record in self._fetch([m.split("|", 1)[1] for m in members]):
                if wanted(record) and matched < limit:
                    found[record.id] = record
                    matched += 1

    def _routes_with(self, state: str) -> list[str]:
        """Routes that have records in ``state``: the counts hash is the route registry."""
        fields = self._client.hkeys(self._key("counts"))
        return [f.split("|", 1)[1] for f in fields if f.split("|", 1)[0] == state]

    def _stats(self, now: float) -> Stats:
        rows, stale, waiting, quarantined, passed = self._run(
            "stats", self._job_keys, [number(now)]
        )
        self._passed_over("stats", passed)
        counts: dict[tuple[str, str], int] = {}
        for field, n in zip(rows[::2], rows[1::2], strict=True):
            state, route = field.split("|", 1)
            counts[(state, route)] = int(n)
        for field in stale:  # expired, not yet deleted by promote: already invisible
            state, route = field.split("|", 1)
            if (state, route) in counts:  # (a record's fields may have been changed)
                counts[(state, route)] -= 1
                if not counts[(state, route)]:
                    del counts[(state, route)]
        return Stats(
            counts=counts, next_due=float(waiting) if waiting else None, quarantined=quarantined
        )

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
        if not routes or limit < 1:
            return []
        keys = [
            *self._job_keys,
            self._key("held:", owner),
            *(self._key("ready:", r) for r in routes),
            *(self._key("wake:", r) for r in routes),
        ]
        bound = "" if max_bytes is None else str(operator.index(max_bytes))
        args = [owner, number(now), number(now + lease), str(limit), bound, str(len(routes))]
        args += routes
        taken, passed = self._run("claim", keys, args)
        self._passed_over("claim", passed)
        return [decode_record(row[0], row[1:]) for row in taken]

    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """Script calls that each look at up to MAX_BATCH ids of the owner's held set
        (``held:<owner>``, the index renew reads), until the set is empty."""
        keys = [*self._job_keys, self._key("held:", owner)]
        args = [
            owner,
            number(now),
            str(DEFAULTS["max_deliveries"]),
            number(DEFAULTS["result_ttl"]),
            str(MAX_BATCH),
            *started,
        ]
        released: dict[str, str] = {}
        while True:
            more, pairs, passed = self._run("release", keys, args)
            self._passed_over("release", passed)
            released.update(zip(pairs[::2], pairs[1::2], strict=True))
            if not more:
                return released

    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        if job_ids is not None and not job_ids:
            return set()
        args = [owner, number(now + lease), "0" if job_ids is None else "1", *(job_ids or ())]
        held, passed = self._run("renew", [*self._job_keys, self._key("held:", owner)], args)
        self._passed_over("renew", passed)
        return set(held)

    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        if not outcomes:
            return []
        args = [owner, number(now), number(DEFAULTS["result_ttl"]), str(len(outcomes))]
        for o in outcomes:
            args += (
                o.job_id,
                o.state,
                "" if o.eta is None else number(o.eta),
                "0" if o.result is None else "1",
                o.result or "",
                "0" if o.error is None else "1",
                "" if o.error is None else json.dumps(o.error),
                "" if o.started_at is None else number(o.started_at),
            )
        keys = [*self._job_keys, self._key("held:", owner)]
        answers, passed = self._run("finish", keys, args)
        self._passed_over("finish", passed)
        return [bool(a) for a in answers]

    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]:
        if not job_ids:
            return []
        args = [
            number(now),
            json.dumps({"reason": reason}),
            number(DEFAULTS["result_ttl"]),
            "1" if running else "0",
        ]
        answers, passed = self._run("cancel", self._job_keys, [*args, *job_ids])
        self._passed_over("cancel", passed)
        return [bool(a) for a in answers]

    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        answers, passed = self._run("retry", self._job_keys, [number(now), *job_ids])
        self._passed_over("retry", passed)
        return [bool(a) for a in answers]

    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:
        keys = [*self._job_keys, self._key("lease:", fence.name)]
        args = [
            number(now),
            fence.owner,
            str(fence.token),
            str(limit),
            str(DEFAULTS["max_deliveries"]),
            number(DEFAULTS["result_ttl"]),
        ]
        promoted, recovered, failed, expired, more, waiting, running, passed = self._run(
            "sweep", keys, args
        )
        pending = [float(t) for t in (waiting, running) if t]
        return SweepReport(
            promoted=promoted,
            recovered=recovered,
            failed=failed,
            expired=expired,
            next_due=min(pending) if pending else None,
            more=bool(more),
            skipped=self._passed_over("sweep", passed),
        )

    # -- leases -------------------------------------------------------------------

    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        until = now + ttl
        info = dict(info or {})
        keys = [self._key("lease:", name), self._key("leases")]
        token = self._run(
            "acquire_lease", keys, [name, owner, number(now), number(until), json.dumps(info)]
        )
        return None if token is None else Lease(name, owner, token, until, info)

    def _release_lease(self, name: str, owner: str) -> bool:
        channel = self._key("wake:scheduler") if name == SCHEDULER_LEASE else ""
        return bool(self._run("release_lease", [self._key("lease:", name)], [owner, channel]))

    def _leases(self, prefix: str, now: float) -> list[Lease]:
        low, high = names_with_prefix(prefix)
        names = self._client.zrangebylex(self._key("leases"), low, high)
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._key("lease:", name))
        # A key that is not a lease is passed over (and named), so one broken lease does not
        # hide the others: forget_leases sets it aside.
        rows = pipe.execute(raise_on_error=False) if names else []
        found = []
        for name, row in zip(names, rows, strict=True):
            try:
                lease = Lease(name, row["o"], int(row["n"]), float(row["u"]), json.loads(row["i"]))
            except (TypeError, KeyError, ValueError):
                if row:  # (an empty row: the lease was just forgotten)
                    self._passed_over("leases", [f"lease:{name}", "not a lease"])
                continue
            if lease.owner and lease.until >= now:
                found.append(lease)
        return found

    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        low, high = names_with_prefix(prefix)
        forgotten, passed = self._run(
            "forget_leases",
            [self._prefix, self._key("leases")],
            [low, high, number(before), str(limit)],
        )
        self._passed_over("forget_leases", passed)
        return int(forgotten)

    # -- schedules ----------------------------------------------------------------

    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool:
        document = _schedule_json(schedule, schedule.next_fire, schedule.updated_at)
        keys = [self._key("schedules"), self._key("schedrev")]
        expected = "" if expected_revision is None else str(expected_revision)
        if fence is None:
            channel = self._key("wake:scheduler")
            args = [schedule.name, document, number(now), "", "", channel, expected]
        else:
            keys.append(self._key("lease:", fence.name))
            args = [schedule.name, document, number(now), fence.owner, str(fence.token), ""]
            args.append(expected)
        return bool(self._run("save_schedule", keys, args))

    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool:
        keys = [
            *self._job_keys,
            self._key("lease:", fence.name),
            self._key("schedules"),
            self._key("schedrev"),
        ]
        args = [
            number(now),
            fence.owner,
            str(fence.token),
            read.name,
            str(read.revision),
            # The script writes this only if the stored revision is the one read, so the
            # read's state is the stored one: keeping it is keeping the stored state.
            _schedule_json(read, next_fire, now, fired_state(read.state, state)),
            *self._put_args(jobs, now)[1:],  # the put's arguments after its own now
        ]
        fired, passed = self._run("fire_schedule", keys, args)
        self._passed_over("fire_schedule", passed)
        return bool(fired)

    def _schedules(self) -> list[ScheduleRecord]:
        documents, revisions = self._run(
            "schedules", [self._key("schedules"), self._key("schedrev")], []
        )
        rows = dict(zip(documents[::2], documents[1::2], strict=True))
        revision = dict(zip(revisions[::2], revisions[1::2], strict=True))
        found = []
        for name in sorted(rows):
            d = json.loads(rows[name])
            found.append(
                ScheduleRecord(
                    name,
                    d["spec"],
                    d["template"],
                    d["next_fire"],
                    d["updated_at"],
                    int(revision.get(name, 0)),
                    d.get("state", {}),
                )
            )
        return found

    def _remove_schedule(self, name: str) -> bool:
        return bool(self._run("remove_schedule", [self._key("schedules")], [name]))

    # -- waiting ------------------------------------------------------------------

    def _wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        """Workers (``routes`` given) wake on their routes' tokens, schedulers on the
        queue's scheduler channel; either way within ``timeout``, to the millisecond."""
        if timeout <= 0:
            return
        if routes is not None and not routes:
            time.sleep(timeout)  # nothing can become ready on no route
            return
        key = (
            None if routes is None else tuple(self._key("wake:", r) for r in dict.fromkeys(routes))
        )
        with self._listeners_lock:
            if self._closed:
                return
            listener = self._listeners.get(key)
            # A forked child inherits the listener but not its thread: start its own.
            if listener is None or listener.pid != os.getpid():
                listener = self._listeners[key] = self._listen(key)
        self._began_waiting()
        listener.wait(timeout)

    def _listen(self, keys: tuple[str, ...] | None) -> RouteListener | SchedulerListener:
        def open_client() -> Any:
            return blocking_client(self.url, self._client, self._prefix)

        if keys is None:
            return SchedulerListener(open_client, self._key("wake:scheduler"))
        return RouteListener(open_client, list(keys))

    def close(self) -> None:
        with self._listeners_lock:
            self._closed = True
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            listener.close()
        if self._lane is not None:
            self._lane.close()
        self._client.close()


def _schedule_json(
    schedule: ScheduleRecord,
    next_fire: float,
    updated_at: float,
    state: dict[str, Any] | None = None,
) -> str:
    """What the ``schedules`` hash holds for a schedule (its revision is kept apart)."""
    return json.dumps(
        {
            "spec": schedule.spec,
            "template": schedule.template,
            "next_fire": next_fire,
            "updated_at": updated_at,
            "state": schedule.state if state is None else state,
        }
    )
