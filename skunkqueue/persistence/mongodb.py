"""MongoDB backend: job documents in time-indexed collections, finished ones under a TTL index.

URLs are whatever pymongo accepts (``mongodb://[user:pass@]host[:port][,host2...]/db?...``
and ``mongodb+srv://``); the database is the URL's path (default ``skunkqueue``). The
seed form ``SkunkQueue('demo', **default_cfg)`` means ``mongodb://localhost:27017/skunkqueue``.

Layout. Queues share four collections of the database; every document carries its queue
name ``q`` and a string ``_id`` of the queue name, the unit separator U+001F (which a
queue name may not contain) and the job id (or lease or schedule name):

* ``sq_jobs`` one document per job, with the JobRecord's fields under their own names,
  plus ``expire_on`` (a BSON date, for the TTL index) and ``claim`` (the token of the
  claim that took it). Indexes (see INDEXES): ``ready`` (q, state, route, eta, seq) for
  claims, ``waiting`` (q, state, eta, seq) for promotion and listings, ``leased``
  (q, state, lease_until) for lapsed leases, ``held`` (q, owner), ``expiry``
  (q, expires_at) for deletion by the leader, and ``ttl`` (expire_on, expireAfterSeconds
  0) so that MongoDB removes expired records by itself as well. Its TTL monitor runs
  about once a minute, so every reader also treats a record past ``expires_at`` as gone.
* ``sq_leases`` leader and worker leases (owner, token, until, info);
* ``sq_schedules`` stored cron and interval schedules, each with its ``revision``;
* ``sq_counters`` one ``seq`` counter per queue.

Atomic steps. Each verb is one atomic document operation or a bounded batch of them,
each filtered on the state (and owner) it expects, so no read-then-write race can hand a
job out twice or overwrite a newer change: a claim marks up to ``limit`` queued jobs
with its own token in one ``update_many`` and reads back what it got; ``finish``,
``cancel`` and lease recovery replace a record only where it still has the state,
owner and delivery count they read. ``sweep`` checks the leader's lease first and then
writes without a transaction: a leader deposed between that check and its writes can
only repeat a transition its successor would make too (promotion, recovery and expiry
are idempotent).

Schedules are different: firing a tick and moving the schedule past it must be one step,
and a deposed leader must not overwrite its successor's schedule. Where the deployment
has transactions (a replica set or sharded cluster), ``fire_schedule`` and a fenced
``save_schedule`` run in one multi-document transaction that puts the fence in a write:
it updates the lease document filtered on the fence's owner, token and ``until >= now``
(no match: ``LeaseLost``). A takeover committed first makes that write fail (a write
conflict, retried by pymongo, then no match); one that comes later waits for the
transaction to end. A fence that is only read would let a concurrent takeover through
(write skew). On a standalone server, without transactions, ``fire_schedule`` checks the
fence, checks the revision, puts the jobs and then moves the schedule on with a
compare-and-set on its revision: a leader that dies between the put and the
compare-and-set leaves ``next_fire`` behind, and its successor fires the tick again,
stored once only while the first job's record exists (it is gone after ``result_ttl``);
a leader deposed or overtaken between its checks and its writes may store the tick's jobs
(from the template it read), though it cannot move the schedule. A schedule's
``revision`` is a field of its document; a removed schedule's document stays, without
``q`` (so no listing sees it), to keep its name's revision.

Concurrency limits (``mongo_gates.py``). A claim that meets a job with a limit runs in a
transaction that writes the event's gate document, so such claims of one event go one
after the other, and a job held back is stored ``state: "parked"`` (read as queued). A
replica set holds the limit exactly against every claimer with a limit; a job of the
event without a limit of its own, claimed at that very instant, may go uncounted. A
standalone server has no transactions: two claims at the same instant may both see a
free slot, so the limit can be exceeded by concurrent claimers there; and a job held back
just as another finishes may wait for the next one of its event to finish. Every finish
makes one extra small query (is any job held back?).

Durability. On a replica set (or sharded cluster) writes use majority write concern,
unless the URL sets ``w=``, and retryable writes stay on (pymongo's default), so a
primary failover loses no job whose ``fire()`` returned. On a standalone server, a write
is as durable as that server's journal.

Wake-ups. Where the deployment has change streams (replica sets and sharded clusters)
one background thread per backend watches this queue's changes and wakes waiting
workers and schedulers at once; elsewhere ``wait`` polls, every 10 ms while work keeps
coming and backing off to every 500 ms when idle (the worst-case delay before an idle
worker sees a new job). ``skunq status`` says which is in use.

Sharded clusters: shard ``sq_jobs`` on ``{q: 1, _id: 1}`` (and the others on
``{_id: 1}``): every hot query filters on ``q``, so one queue's claims and promotions go
to one shard, and queues spread over shards.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..config import redact
from ..errors import BackendUnavailable, ConfigurationError
from ..model import CANCELLABLE, RETRYABLE, WAITING, JobRecord, JobState, Outcome
from . import mongo_gates
from .base import Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport, bounded_wait
from .rules import (
    MAX_BATCH,
    apply_outcome,
    bytes_cut,
    cancel,
    check_fence,
    expected_revision_holds,
    payload_size,
    recover,
    release_held,
    retry,
    state_on_put,
    taken_lease,
    unchanged_since,
)

T = TypeVar("T")

default_cfg: dict[str, Any] = {
    "backend": "mongodb",
    "conn_url": "localhost:27017",
    "dbname": "skunkqueue",
}

log = logging.getLogger("skunkqueue.mongodb")
T = TypeVar("T")

JOBS, LEASES, SCHEDULES, COUNTERS = "sq_jobs", "sq_leases", "sq_schedules", "sq_counters"
DEFAULT_DATABASE = "skunkqueue"
#: How long one call waits for the server's reply, unless the URL sets socketTimeoutMS.
SOCKET_TIMEOUT_MS = 10_000
SEPARATOR = "\x1f"  # between queue name and id in _id
#: Hint for queries by _id that also filter on other fields: the plan is the _id index
#: whatever the planner guesses (the stand-in server's planner scans without it).
BY_ID = "_id_"

#: Index name -> (keys, options) of each collection; ensure_indexes() makes them so.
INDEXES: dict[str, dict[str, tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    JOBS: {
        "ready": ([("q", 1), ("state", 1), ("route", 1), ("eta", 1), ("seq", 1)], {}),
        "waiting": ([("q", 1), ("state", 1), ("eta", 1), ("seq", 1)], {}),
        "leased": ([("q", 1), ("state", 1), ("lease_until", 1)], {}),
        "held": ([("q", 1), ("owner", 1)], {}),
        "expiry": ([("q", 1), ("expires_at", 1)], {}),
        "ttl": ([("expire_on", 1)], {"expireAfterSeconds": 0}),
    },
    LEASES: {"names": ([("q", 1), ("name", 1)], {})},
    SCHEDULES: {"names": ([("q", 1), ("name", 1)], {})},
}

INDEXES[JOBS].update(mongo_gates.GATE_INDEXES)

#: Polling fallback: first and longest interval between looks (seconds).
POLL_MIN, POLL_MAX = 0.01, 0.5

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
#: Reads and compare-and-sets a cancel gives one job whose record keeps changing under it.
CANCEL_ATTEMPTS = 5
WAITING_STATES = sorted(s.value for s in WAITING)
CANCELLABLE_STATES = sorted(s.value for s in CANCELLABLE)
RETRYABLE_STATES = sorted(s.value for s in RETRYABLE)
RECORD_FIELDS = tuple(JobRecord.__dataclass_fields__)
_STR_FIELDS = ("id", "event", "route", "payload", "serializer", "state")

# Indexes already checked by this process, per (client address, database).
_indexed: set[tuple[str, str]] = set()
_indexed_lock = threading.Lock()


def _date(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


class MongoBackend(Backend):
    """One queue in a MongoDB database (see the module docstring for the layout)."""

    store_name = "MongoDB"
    put_unit = "each job"
    clock_source = "the MongoDB server's clock (hello's localTime, to the millisecond)"
    clock_resolution = 0.001

    def __init__(self, url: str, queue: str, *, call_timeout: float | None = None) -> None:
        super().__init__(url, queue, call_timeout=call_timeout)
        if SEPARATOR in queue or "\x00" in queue:
            raise ConfigurationError("a queue name may not contain U+001F or NUL")
        try:
            import pymongo
            from pymongo import errors
        except ImportError as exc:
            raise ImportError(
                "the MongoDB backend needs pymongo: pip install 'skunkqueue[mongodb]'"
            ) from exc
        self._pymongo = pymongo
        self._errors = errors
        self.unreachable = (errors.ConnectionFailure, errors.ServerSelectionTimeoutError)
        # Our timeouts unless the URL sets its own (pymongo lets keywords win over it).
        given = {part.split("=")[0].lower() for part in (urlsplit(url).query or "").split("&")}
        options = {
            name: value
            for name, value in (
                ("serverSelectionTimeoutMS", 10_000),
                ("connectTimeoutMS", 5_000),
                # A half-open connection must not block a call (a worker's heartbeat)
                # for ever: a reply that does not come within this is BackendUnavailable.
                ("socketTimeoutMS", SOCKET_TIMEOUT_MS),
            )
            if name.lower() not in given
        }
        try:
            self._client: Any = pymongo.MongoClient(url, tz_aware=True, **options)
        except errors.ConfigurationError as exc:
            raise ConfigurationError(f"MongoDB URL {redact(url)!r}: {exc}") from None
        except (errors.InvalidURI, ValueError) as exc:  # pymongo's words for a malformed URL
            raise ConfigurationError(f"MongoDB URL {redact(url)!r}: {exc}") from None
        self._budget = self._call_budget()
        try:
            with self._within_budget():
                hello = self._client.admin.command("hello")
        except errors.PyMongoError as exc:
            self._client.close()
            raise BackendUnavailable(f"cannot reach MongoDB at {redact(url)!r}: {exc}") from exc
        replicated = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        database = self._client.get_default_database(DEFAULT_DATABASE)
        if replicated and "w=" not in (urlsplit(url).query or ""):
            from pymongo.write_concern import WriteConcern

            database = database.with_options(write_concern=WriteConcern("majority"))
        self._db = database
        self._jobs = database[JOBS]
        self._lease_docs = database[LEASES]
        self._schedule_docs = database[SCHEDULES]
        self._counters = database[COUNTERS]
        self._calling(self._ensure_indexes)
        #: Whether fire_schedule and fenced saves run in multi-document transactions:
        #: where the deployment has them (a replica set or sharded cluster).
        self.transactions = replicated
        self._watcher: _ChangeWatcher | None = None
        self.wake_mode = "polling (10-500 ms)"
        if replicated:
            self._watcher = _ChangeWatcher(self._db, queue, self.unreachable)
            self.wake_mode = "change streams"
        self._idle_polls = 0

    # -- plumbing -----------------------------------------------------------------

    def _call_budget(self) -> float | None:
        """Seconds one call may take in all, with a ``call_timeout``: the smallest of it,
        the URL's ``timeoutMS`` and the socket timeout (a reply longer than that fails the
        call anyway). socketTimeoutMS alone bounds each wait, and a retried read waits for
        server selection and a new reply again: three times the timeout on a frozen server."""
        if self.call_timeout is None:
            return None
        options = self._client.options
        configured = [t for t in (options.timeout, options.pool_options.socket_timeout) if t]
        return bounded_wait(min(configured, default=self.call_timeout), self.call_timeout)

    def _within_budget(self) -> AbstractContextManager[Any]:
        """pymongo's client-side operation timeout for what runs inside, when bounded."""
        if self._budget is None:
            return nullcontext()
        return self._pymongo.timeout(self._budget)

    def _calling(self, verb: Callable[..., T], *args: Any) -> T:
        """A verb, within the call budget when there is one: its every query, retry and
        server selection share one deadline, past which it raises ``BackendUnavailable``."""
        try:
            with self._within_budget():
                return super()._calling(verb, *args)
        except self._errors.PyMongoError as exc:
            if not exc.timeout:  # the server's maxTimeMS, a write concern's wtimeout
                raise
            raise BackendUnavailable(f"{self.store_name} at {redact(self.url)!r}: {exc}") from exc

    def wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        # A wait lasts as long as its caller asked, whatever the call budget: only each of
        # its polls is a bounded call (in _wait).
        return super()._calling(self._wait, timeout, routes)

    def _ensure_indexes(self) -> None:
        """Create the indexes, once per process and database; an index of ours whose
        definition changed (keys or options) is dropped and made again."""
        place = (self.url, self._db.name)
        with _indexed_lock:
            if place in _indexed:
                return
            for name, wanted in INDEXES.items():
                collection = self._db[name]
                existing = collection.index_information()
                for index, (keys, options) in wanted.items():
                    found = existing.get(index)
                    if found is not None and (
                        [tuple(k) for k in found["key"]] != keys
                        or any(found.get(k) != v for k, v in options.items())
                    ):
                        log.warning("index %s.%s changed: rebuilding it", name, index)
                        collection.drop_index(index)
                        found = None
                    if found is None:
                        collection.create_index(keys, name=index, **options)
            _indexed.add(place)

    def _key(self, name: str) -> str:
        return f"{self.queue}{SEPARATOR}{name}"

    def _document(self, job: JobRecord) -> dict[str, Any]:
        for name in _STR_FIELDS:
            value = getattr(job, name)
            if not isinstance(value, str):
                raise TypeError(f"job field {name} must be a string, not {type(value).__name__}")
        document = job.to_dict()
        document["_id"] = self._key(job.id)
        document["q"] = self.queue
        document["expire_on"] = _date(job.expires_at)
        return document

    @staticmethod
    def _record(document: dict[str, Any]) -> JobRecord:
        record = {name: document[name] for name in RECORD_FIELDS if name in document}
        if record.get("state") == mongo_gates.PARKED:  # held back by a limit: still queued
            record["state"] = QUEUED
        return JobRecord(**record)

    def _alive(self, now: float) -> dict[str, Any]:
        return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}

    def _check_fence(self, fence: Fence, now: float) -> None:
        document = self._lease_docs.find_one({"_id": self._key(fence.name)})
        check_fence(None if document is None else self._lease(document), fence, now)

    def _fence_in(self, session: Any, fence: Fence, now: float) -> None:
        """Raise ``LeaseLost`` unless ``fence`` holds at ``now`` (rules.fence_holds, as a
        filter), by a write: inside a transaction, a takeover that commits before it makes
        it conflict, and one that comes after it waits for the transaction to end."""
        held = self._lease_docs.update_one(
            {
                "_id": self._key(fence.name),
                "owner": fence.owner,
                "token": fence.token,
                "until": {"$gte": now},
            },
            # A write that changed nothing would conflict with nothing: count the writes.
            {"$inc": {"fenced_writes": 1}},
            session=session,
            hint=BY_ID,
        )
        if held.matched_count != 1:
            check_fence(None, fence, now)  # raises LeaseLost, worded as everywhere

    def _transaction(self, body: Callable[[Any], T]) -> T:
        """``body(session)`` in one multi-document transaction; pymongo retries it after a
        write conflict (from a fresh snapshot) and commits it."""
        with self._client.start_session() as session:
            return session.with_transaction(body, write_concern=self._db.write_concern)

    # -- jobs ---------------------------------------------------------------------

    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """Each job is its own unit: one unordered insert_many of every job (each
        document made before any is sent), which writes every document it can, whatever
        its place; a document refused for another reason than an existing id raises
        BulkWriteError after the others are written. Ids that exist are refused, unless
        their record expired (then replaced)."""
        return self._insert(self._numbered(jobs, now), now)

    def _numbered(self, jobs: Sequence[JobRecord], now: float) -> list[dict[str, Any]]:
        """The documents of ``jobs`` as a put stores them: states decided, seqs taken from
        the queue's counter (one increment for all; a job not stored leaves a gap)."""
        documents = [self._document(job) for job in jobs]
        if not documents:
            return []
        counter = self._counters.find_one_and_update(
            {"_id": self.queue},
            {"$inc": {"seq": len(documents)}},
            upsert=True,
            return_document=self._pymongo.ReturnDocument.AFTER,
        )
        first = counter["seq"] - len(documents)
        for offset, (job, document) in enumerate(zip(jobs, documents, strict=True), 1):
            document["state"] = state_on_put(job, now)
            document["seq"] = first + offset
        return documents

    def _insert(self, documents: list[dict[str, Any]], now: float) -> list[bool]:
        if not documents:
            return []
        answers = [True] * len(documents)
        try:
            self._jobs.insert_many(documents, ordered=False)
        except self._errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            for error in errors:
                index = error["index"]
                document = documents[index]
                replaced = self._jobs.replace_one(
                    {"_id": document["_id"], "expires_at": {"$lte": now}}, document, hint=BY_ID
                )
                answers[index] = replaced.modified_count == 1
        return answers

    def _insert_in(self, session: Any, documents: list[dict[str, Any]], now: float) -> None:
        """``put``'s writes inside a transaction, where a duplicate key would abort the
        whole transaction: look the ids up first, then insert only new ones and replace
        expired ones (an unexpired record is left untouched)."""
        keys = [d["_id"] for d in documents]
        found = self._jobs.find(
            {"_id": {"$in": keys}}, projection={"expires_at": 1}, session=session, hint=BY_ID
        )
        expiry: dict[str, float | None] = {d["_id"]: d.get("expires_at") for d in found}
        fresh = []
        for document in documents:
            key = document["_id"]
            if key in expiry:
                ends = expiry[key]
                if ends is None or ends > now:
                    continue
                self._jobs.replace_one(
                    {"_id": key, "expires_at": {"$lte": now}}, document, session=session, hint=BY_ID
                )
            else:
                fresh.append(document)
            expiry[key] = document.get("expires_at")  # the id's second copy finds it stored
        if fresh:
            self._jobs.insert_many(fresh, session=session)

    def _get(self, job_id: str, now: float) -> JobRecord | None:
        document = self._jobs.find_one({"_id": self._key(job_id)})
        if document is None:
            return None
        record = self._record(document)
        return None if record.expires_at is not None and record.expires_at <= now else record

    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        query: dict[str, Any] = {"q": self.queue, **self._alive(now)}
        if state == QUEUED:
            query["state"] = {"$in": [QUEUED.value, mongo_gates.PARKED]}
        elif state is not None:
            query["state"] = state
        if route is not None:
            query["route"] = route
        # Not a hot query, but an index walk all the same: the $or of _alive() leads
        # weaker planners to a collection scan.
        # ready bounds (state, route) and waiting bounds state; with a route but no state,
        # neither bounds anything past q, and the stand-in then drops matches: expiry.
        index = "expiry" if state is None else "ready" if route is not None else "waiting"
        found = self._jobs.find(query, hint=index).sort([("eta", 1), ("seq", 1)]).limit(limit)
        return [self._record(d) for d in found]

    def _stats(self, now: float) -> Stats:
        pipeline = [
            {"$match": {"q": self.queue, **self._alive(now)}},
            {"$group": {"_id": {"state": "$state", "route": "$route"}, "n": {"$sum": 1}}},
        ]
        rows = list(self._jobs.aggregate(pipeline, hint="expiry"))  # see list_jobs
        first = self._jobs.find_one(
            {"q": self.queue, "state": {"$in": WAITING_STATES}},
            sort=[("eta", 1), ("seq", 1)],
            projection={"eta": 1},
            hint="waiting",
        )
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            state = row["_id"]["state"]
            key = (QUEUED.value if state == mongo_gates.PARKED else state, row["_id"]["route"])
            counts[key] = counts.get(key, 0) + row["n"]
        return Stats(counts=counts, next_due=None if first is None else first["eta"])

    def _claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        """Mark the first ``limit`` queued jobs with this claim's token in one
        update_many (filtered on ``state: queued``, so a job another claimer took in
        between is skipped), then read back what the token got; a few rounds while
        other claimers won the first picks. With ``max_bytes`` the server reports each
        candidate's payload size ($strLenBytes) instead of sending the payload."""
        wanted = limit  # the base caps it at MAX_BATCH
        if wanted <= 0 or not routes:
            return []
        token = os.urandom(12).hex()
        claimed: list[JobRecord] = []
        used = 0  # payload bytes claimed so far
        query = {"q": self.queue, "state": QUEUED, "route": {"$in": list(routes)}}
        projection: dict[str, Any] = {"_id": 1, "eta": 1, "concurrency": 1}
        if max_bytes is not None:
            projection["size"] = {"$strLenBytes": "$payload"}
        for _ in range(4):
            found = list(
                self._jobs.find(query, projection=projection)
                .sort([("eta", 1), ("seq", 1)])
                .limit(wanted - len(claimed))
            )
            if any(d.get("concurrency") is not None for d in found):
                # A job with a limit: claimed by the limits (mongo_gates); a batch begun
                # here ends here, and the next claim goes that way.
                if not claimed:
                    claimed = mongo_gates.claim_gated(
                        self, routes, owner, now, lease, wanted, max_bytes
                    )
                break
            fitting = found
            if max_bytes is not None:
                sizes = [d["size"] for d in found]
                fitting = found[: bytes_cut(sizes, max_bytes, len(claimed), used)]
            picks = [d["_id"] for d in fitting]
            if not picks:
                break
            self._jobs.update_many(
                {"_id": {"$in": picks}, "state": QUEUED},
                {
                    "$set": {
                        "state": RUNNING,
                        "owner": owner,
                        "lease_until": now + lease,
                        "started_at": now,
                        "claim": token,
                    },
                    "$inc": {"deliveries": 1},
                },
                hint=BY_ID,
            )
            got = [
                self._record(d)
                for d in self._jobs.find(
                    {"_id": {"$in": picks}, "claim": token, "state": RUNNING}, hint=BY_ID
                )
            ]
            claimed += got
            used += sum(payload_size(r.payload) for r in got)
            cut = len(fitting) < len(found)
            if len(claimed) >= wanted or (cut and len(got) == len(picks)):
                break  # full, or cut by max_bytes with every pick won: the rest stays
        claimed.sort(key=lambda r: (r.eta, r.seq))
        return claimed

    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        query: dict[str, Any] = {"q": self.queue, "owner": owner, "state": RUNNING}
        if job_ids is not None:
            query["_id"] = {"$in": [self._key(i) for i in job_ids]}
        self._jobs.update_many(query, {"$set": {"lease_until": now + lease}}, hint="held")
        return {d["id"] for d in self._jobs.find(query, projection={"id": 1}, hint="held")}

    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """Finds the owner's running jobs by the ``held`` index (as renew does), up to
        MAX_BATCH per round, and writes each back with a compare-and-set on its state, owner
        and delivery count: one find per round plus one write per job."""
        begun = set(started)
        released: dict[str, str] = {}
        query = {"q": self.queue, "owner": owner, "state": RUNNING}
        while True:
            held = [self._record(d) for d in self._jobs.find(query, hint="held").limit(MAX_BATCH)]
            left = []
            for old in held:
                new = self._record(self._document(old))
                release_held(new, begun, now)
                if self._replace_if_unchanged(old, new):
                    released[old.id] = new.state
                    left.append(old)
            mongo_gates.let_through(self, left)
            if len(held) < MAX_BATCH:
                return released

    def _replace_if_unchanged(
        self, old: JobRecord, new: JobRecord, stored_state: str | None = None
    ) -> bool:
        """Write ``new`` where the stored record still has ``old``'s state (or
        ``stored_state``, for a job held back by a limit: stored "parked", read "queued"),
        owner and delivery count: a compare-and-set on one document."""
        result = self._jobs.replace_one(
            {
                "_id": self._key(old.id),
                "state": stored_state or old.state,
                "owner": old.owner,
                "deliveries": old.deliveries,
            },
            self._document(new),
            hint=BY_ID,
        )
        return result.matched_count == 1

    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        if not outcomes:
            return []
        keys = [self._key(o.job_id) for o in outcomes]
        held = {
            d["id"]: self._record(d)
            for d in self._jobs.find(
                {"_id": {"$in": keys}, "state": RUNNING, "owner": owner}, hint=BY_ID
            )
        }
        answers: list[bool] = []
        left = []
        for outcome in outcomes:
            old = held.pop(outcome.job_id, None)  # one outcome per job and claim
            if old is None:
                answers.append(False)
                continue
            new = self._record(self._document(old))
            apply_outcome(new, outcome, now)
            answers.append(self._replace_if_unchanged(old, new))
            if answers[-1]:
                left.append(old)
        mongo_gates.let_through(self, left)
        return answers

    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]:
        keys = [self._key(i) for i in job_ids]
        states = [*CANCELLABLE_STATES, mongo_gates.PARKED, *([RUNNING] if running else [])]
        documents = list(
            self._jobs.find({"_id": {"$in": keys}, "state": {"$in": states}}, hint=BY_ID)
        )
        stored = {d["id"]: d["state"] for d in documents}
        found = {d["id"]: self._record(d) for d in documents}
        answers: list[bool] = []
        gated: list[JobRecord] = []
        stopped: list[JobRecord] = []
        for job_id in job_ids:
            old = found.pop(job_id, None)  # an id given twice is cancelled once
            done = False
            for _ in range(CANCEL_ATTEMPTS):
                new = None if old is None else self._record(self._document(old))
                if old is None or new is None or not cancel(new, now, reason, running):
                    break
                # A compare-and-set on state, owner and deliveries. A change that lands
                # between the read and the write (a promotion, a claim, an outcome, a
                # recovery) makes it miss: the record is read again and the rule applied
                # to what is stored now, as the other stores decide in one atomic step.
                if self._replace_if_unchanged(old, new, stored.get(job_id)):
                    done = True
                    break
                document = self._jobs.find_one(
                    {"_id": self._key(job_id), "state": {"$in": states}}, hint=BY_ID
                )
                old = None if document is None else self._record(document)
                stored[job_id] = None if document is None else document["state"]
            answers.append(done)
            if done and old is not None and old.state == QUEUED and old.concurrency is not None:
                gated.append(old)
            elif done and old is not None and old.state == RUNNING:
                stopped.append(old)  # a slot of its event is free
        mongo_gates.let_through(self, gated, cancelled=True)
        mongo_gates.let_through(self, stopped)
        return answers

    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """One find of the candidates, one counter increment for their new seqs, then a
        compare-and-set per record (as cancel): of two retries of one job, one wins."""
        keys = [self._key(i) for i in job_ids]
        found = {
            d["id"]: self._record(d)
            for d in self._jobs.find(
                {"_id": {"$in": keys}, "state": {"$in": RETRYABLE_STATES}}, hint=BY_ID
            )
        }
        retried: dict[int, tuple[JobRecord, JobRecord]] = {}
        for place, job_id in enumerate(job_ids):
            old = found.pop(job_id, None)  # an id given twice is retried once
            new = None if old is None else self._record(self._document(old))
            if old is not None and new is not None and retry(new, now):
                retried[place] = (old, new)
        if retried:
            counter = self._counters.find_one_and_update(
                {"_id": self.queue},
                {"$inc": {"seq": len(retried)}},
                upsert=True,
                return_document=self._pymongo.ReturnDocument.AFTER,
            )
            first = counter["seq"] - len(retried)
            for offset, (_, new) in enumerate(retried.values(), 1):
                new.seq = first + offset
        return [
            place in retried and self._retried_if_unchanged(*retried[place])
            for place in range(len(job_ids))
        ]

    def _retried_if_unchanged(self, old: JobRecord, new: JobRecord) -> bool:
        """Write ``new`` where the record is still ``old``: its seq changes with every
        retry, so a stale retry never lands on a record that was retried and ended again."""
        result = self._jobs.replace_one(
            {"_id": self._key(old.id), "state": old.state, "seq": old.seq},
            self._document(new),
            hint=BY_ID,
        )
        return result.matched_count == 1

    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:
        report = SweepReport()
        self._check_fence(fence, now)
        due_query = {"q": self.queue, "state": {"$in": WAITING_STATES}, "eta": {"$lte": now}}
        due = [
            d["_id"]
            for d in self._jobs.find(due_query, projection={"_id": 1}, hint="waiting")
            .sort([("eta", 1), ("seq", 1)])
            .limit(limit)
        ]
        if due:
            moved = self._jobs.update_many(
                {**due_query, "_id": {"$in": due}}, {"$set": {"state": QUEUED}}, hint=BY_ID
            )
            report.promoted = moved.modified_count
        lapsed = [
            self._record(d)
            for d in self._jobs.find(
                {"q": self.queue, "state": RUNNING, "lease_until": {"$lt": now}}
            ).limit(limit)
        ]
        left = []
        for old in lapsed:
            new = self._record(self._document(old))
            recover(new, now)
            if self._replace_if_unchanged(old, new):
                left.append(old)
                if new.state == JobState.ERROR:
                    report.failed += 1
                else:
                    report.recovered += 1
        mongo_gates.let_through(self, left)
        expired = [
            d["_id"]
            for d in self._jobs.find(
                {"q": self.queue, "expires_at": {"$lte": now}}, projection={"_id": 1}
            ).limit(limit)
        ]
        if expired:
            deleted = self._jobs.delete_many(
                {"_id": {"$in": expired}, "expires_at": {"$lte": now}}, hint=BY_ID
            )
            report.expired = deleted.deleted_count
        report.more = len(due) >= limit or len(lapsed) >= limit or len(expired) >= limit
        report.next_due = self._next_due()
        return report

    def _next_due(self) -> float | None:
        first = self._jobs.find_one(
            {"q": self.queue, "state": {"$in": WAITING_STATES}},
            sort=[("eta", 1), ("seq", 1)],
            projection={"eta": 1},
            hint="waiting",
        )
        running = self._jobs.find_one(
            {"q": self.queue, "state": RUNNING, "lease_until": {"$ne": None}},
            sort=[("lease_until", 1)],
            projection={"lease_until": 1},
            hint="leased",
        )
        times = [d[f] for d, f in ((first, "eta"), (running, "lease_until")) if d is not None]
        return min(times) if times else None

    # -- leases -------------------------------------------------------------------

    def _lease(self, document: dict[str, Any]) -> Lease:
        return Lease(
            document["name"],
            document["owner"],
            document["token"],
            document["until"],
            dict(document.get("info") or {}),
        )

    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        """The rule book decides (``rules.taken_lease``) on the lease as read; the write is a
        compare-and-set on what was read, so a lease that changed meanwhile is not taken
        (``None``: the caller asks again at its next renewal)."""
        key = self._key(name)
        found = self._lease_docs.find_one({"_id": key}, hint=BY_ID)
        current = None if found is None else self._lease(found)
        lease = taken_lease(current, name, owner, now, ttl, info or {})
        if lease is None:
            return None
        document = {
            "_id": key,
            "q": self.queue,
            "name": name,
            "owner": lease.owner,
            "token": lease.token,
            "until": lease.until,
            "info": lease.info,
        }
        if found is None:
            try:
                self._lease_docs.insert_one(document)
            except self._errors.DuplicateKeyError:
                return None  # another process made it first
            return lease
        unchanged = {"_id": key, **{f: found[f] for f in ("owner", "token", "until")}}
        written = self._lease_docs.replace_one(unchanged, document, hint=BY_ID)
        return lease if written.matched_count == 1 else None

    def _release_lease(self, name: str, owner: str) -> bool:
        result = self._lease_docs.update_one(
            {"_id": self._key(name), "owner": owner},
            {"$set": {"owner": "", "until": 0.0, "info": {}}},
            hint=BY_ID,
        )
        return result.matched_count == 1

    def _leases(self, prefix: str, now: float) -> list[Lease]:
        query = {
            "q": self.queue,
            "name": {"$regex": "^" + re.escape(prefix)},
            "owner": {"$ne": ""},
            "until": {"$gte": now},
        }
        return [self._lease(d) for d in self._lease_docs.find(query).sort("name", 1)]

    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        query = {
            "q": self.queue,
            "name": {"$regex": "^" + re.escape(prefix)},
            "until": {"$lt": before},
        }
        ended = [d["_id"] for d in self._lease_docs.find(query, {"_id": 1}).limit(limit)]
        if not ended:
            return 0
        # The filter again: a lease renewed since the find stays.
        return self._lease_docs.delete_many({**query, "_id": {"$in": ended}}).deleted_count

    # -- schedules ----------------------------------------------------------------

    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool:
        fields = {
            "q": self.queue,
            "name": schedule.name,
            "spec": schedule.spec,
            "template": schedule.template,
            "next_fire": schedule.next_fire,
            "updated_at": schedule.updated_at,
            "state": schedule.state,
        }
        if fence is not None and self.transactions:

            def save(session: Any) -> bool:
                self._fence_in(session, fence, now)
                if not self._write_schedule(session, fields, expected_revision):
                    raise _Refused
                return True

            try:
                return self._transaction(save)
            except _Refused:
                return False
        if fence is not None:
            self._check_fence(fence, now)
        try:
            return self._write_schedule(None, fields, expected_revision)
        except self._errors.DuplicateKeyError:  # inserted by another writer since the look-up
            return False

    def _write_schedule(
        self, session: Any, fields: dict[str, Any], expected_revision: int | None
    ) -> bool:
        """Store a schedule's fields with its name's revision raised by one, if the
        expected revision holds: one atomic write, a compare-and-set on what was read."""
        key = self._key(fields["name"])
        update = {"$set": fields, "$inc": {"revision": 1}}
        if expected_revision is None:
            self._schedule_docs.update_one({"_id": key}, update, upsert=True, session=session)
            return True
        found = self._schedule_docs.find_one({"_id": key}, session=session, hint=BY_ID)
        live = found is not None and "q" in found
        stored = found.get("revision", 0) if live else None  # type: ignore[union-attr]
        if not expected_revision_holds(stored, expected_revision):
            return False
        if found is None:
            self._schedule_docs.insert_one({"_id": key, **fields, "revision": 1}, session=session)
            return True
        unchanged = {
            "_id": key,
            "q": found["q"] if live else {"$exists": False},
            **_revision_is(found.get("revision", 0)),
        }
        written = self._schedule_docs.update_one(unchanged, update, session=session, hint=BY_ID)
        return written.matched_count == 1

    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool:
        # Seqs are taken outside the transaction, so producers' puts never conflict with it.
        documents = self._numbered(jobs, now)
        same = {"_id": self._key(read.name), "q": self.queue, **_revision_is(read.revision)}
        advance = {"$set": {"next_fire": next_fire, "updated_at": now}, "$inc": {"revision": 1}}
        if state is not None:
            advance["$set"]["state"] = state
        if not self.transactions:
            return self._fire_without_transaction(read, documents, same, advance, now, fence)

        def fire(session: Any) -> bool:
            self._fence_in(session, fence, now)
            stored = self._schedule_docs.find_one(
                {"_id": same["_id"], "q": self.queue}, session=session, hint=BY_ID
            )
            if stored is None or not unchanged_since(stored.get("revision", 0), read.revision):
                raise _Refused
            self._insert_in(session, documents, now)
            self._schedule_docs.update_one(same, advance, session=session, hint=BY_ID)
            return True

        try:
            # A put of one of the ids committed since the transaction began makes its
            # insert a write conflict, not a duplicate key: pymongo runs fire again.
            return self._transaction(fire)
        except _Refused:
            return False

    def _fire_without_transaction(
        self,
        read: ScheduleRecord,
        documents: list[dict[str, Any]],
        same: dict[str, Any],
        advance: dict[str, Any],
        now: float,
        fence: Fence,
    ) -> bool:
        """A standalone server has no transactions: check, put, then compare-and-set the
        schedule (see the module docstring for what that does not guarantee)."""
        self._check_fence(fence, now)
        stored = self._schedule_docs.find_one({"_id": same["_id"], "q": self.queue}, hint=BY_ID)
        if stored is None or not unchanged_since(stored.get("revision", 0), read.revision):
            return False
        self._insert(documents, now)
        return self._schedule_docs.update_one(same, advance, hint=BY_ID).matched_count == 1

    def _schedules(self) -> list[ScheduleRecord]:
        found = self._schedule_docs.find({"q": self.queue}).sort("name", 1)
        return [
            ScheduleRecord(
                name=d["name"],
                spec=d["spec"],
                template=d["template"],
                next_fire=d["next_fire"],
                updated_at=d.get("updated_at", 0.0),
                revision=d.get("revision", 0),
                state=d.get("state") or {},
            )
            for d in found
        ]

    def _remove_schedule(self, name: str) -> bool:
        # The document stays, without q (so no listing finds it), to keep the name's revision.
        removed = self._schedule_docs.update_one(
            {"_id": self._key(name), "q": self.queue},
            {"$unset": {"q": "", "spec": "", "template": "", "state": ""}},
            hint=BY_ID,
        )
        return removed.matched_count == 1

    # -- waiting ------------------------------------------------------------------

    def _store_time(self) -> float:
        # Milliseconds, cut down: the reading is never ahead of the server. A command's
        # reply is decoded without the client's tz_aware: the naive datetime is UTC.
        local_time = self._client.admin.command("hello")["localTime"]
        return local_time.replace(tzinfo=timezone.utc).timestamp()

    def _wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        if timeout <= 0:
            return
        self._began_waiting()  # the watcher's versions, or the polls, see any change from here
        if self._watcher is not None and self._watcher.healthy():
            self._watcher.wait(timeout, routes)
            return
        # Polling: a cheap indexed look per interval, the interval doubling while idle.
        deadline = time.monotonic() + timeout
        while True:
            interval = min(POLL_MAX, POLL_MIN * 2**self._idle_polls)
            left = deadline - time.monotonic()
            time.sleep(max(0.0, min(interval, left)))
            if time.monotonic() >= deadline - 0.0005:
                self._idle_polls += 1
                return
            if routes is None:
                self._idle_polls += 1
                return  # a scheduler looks itself; only its sleep is bounded here
            query = {"q": self.queue, "state": QUEUED, "route": {"$in": list(routes)}}
            with self._within_budget():
                found = self._jobs.find_one(query, projection={"_id": 1})
            if found is not None:
                self._idle_polls = 0
                return
            self._idle_polls += 1

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        self._client.close()


class _Refused(Exception):
    """Ends a transaction that must write nothing: the schedule changed since it was read."""


def _revision_is(revision: int) -> dict[str, Any]:
    """A filter on a schedule document's revision; documents written by versions without
    revisions have none, and read as 0."""
    return {"revision": revision} if revision else {"revision": {"$in": [0, None]}}


class _ChangeWatcher:
    """One change stream on this queue's jobs and leases, in a daemon thread.

    A worker waiting on routes wakes when a job may have become queued (an insert or
    replace with state queued, an update setting state); a scheduler wakes when an eta or
    lease may have moved earlier (a job stored scheduled or retrying, a lease shortened,
    a lease released). Waking early is allowed, so the filters are coarse.
    """

    def __init__(self, database: Any, queue: str, unreachable: tuple[type, ...]) -> None:
        self._db = database
        self._queue = queue
        self._unreachable = unreachable
        self._cond = threading.Condition()
        self._worker_version = 0
        self._scheduler_version = 0
        self._seen: dict[str, int] = {}
        self._closed = False
        self._connected = threading.Event()
        self._failed_at = 0.0
        self._thread = threading.Thread(
            target=self._loop, name=f"skunkqueue-watch-{queue}", daemon=True
        )
        self._thread.start()

    def healthy(self) -> bool:
        """Watching now, or never failed: while the stream is down, wait() polls."""
        if self._connected.is_set():
            return True
        return self._failed_at == 0.0 and self._connected.wait(2.0)

    def _loop(self) -> None:
        mine = "^" + re.escape(self._queue + SEPARATOR)
        pipeline = [
            {"$match": {"ns.coll": {"$in": [JOBS, LEASES]}, "documentKey._id": {"$regex": mine}}}
        ]
        failures = 0
        while not self._closed:
            try:
                with self._db.watch(pipeline, max_await_time_ms=250) as stream:
                    self._connected.set()
                    self._bump(workers=True, scheduler=True)  # changes before it were unseen
                    failures = 0
                    while not self._closed and stream.alive:
                        change = stream.try_next()
                        if change is not None:
                            self._classify(change)
            except Exception as exc:
                if self._closed:
                    return
                failures += 1
                self._connected.clear()
                self._failed_at = time.monotonic()
                log.debug("change stream on %s: %r; reconnecting", self._queue, exc)
                self._bump(workers=True, scheduler=True)  # waiters look (and poll) now
                with self._cond:
                    self._cond.wait(min(2.0, 0.05 * 2**failures))

    def _classify(self, change: dict[str, Any]) -> None:
        kind = change.get("operationType")
        collection = change.get("ns", {}).get("coll")
        if collection == LEASES:
            self._bump(workers=False, scheduler=True)
            return
        document = change.get("fullDocument") or {}
        updated = (change.get("updateDescription") or {}).get("updatedFields") or {}
        state = document.get("state") or updated.get("state")
        workers = state == QUEUED or kind == "update" and "state" in updated
        scheduler = state in WAITING_STATES or "lease_until" in updated or kind == "replace"
        if workers or scheduler:
            self._bump(workers=workers, scheduler=scheduler)

    def _bump(self, *, workers: bool, scheduler: bool) -> None:
        with self._cond:
            if workers:
                self._worker_version += 1
            if scheduler:
                self._scheduler_version += 1
            self._cond.notify_all()

    def wait(self, timeout: float, routes: Sequence[str] | None) -> None:
        kind = "scheduler" if routes is None else "workers"
        deadline = time.monotonic() + timeout
        with self._cond:
            version = self._version(kind)
            if self._seen.get(kind) == version:
                while self._version(kind) == version and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self._seen[kind] = self._version(kind)

    def _version(self, kind: str) -> int:
        return self._scheduler_version if kind == "scheduler" else self._worker_version

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2.0)
