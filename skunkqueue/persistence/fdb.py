"""FoundationDB backend: ordered keys in one subspace per queue, every verb one short transaction.

URLs:

* ``fdb:///etc/foundationdb/fdb.cluster`` (or ``fdb://`` for the default cluster file): a
  real cluster, through the official binding (``pip install 'skunkqueue[fdb]'``, which
  needs the client library ``libfdb_c`` installed). The queue's subspace comes from the
  directory layer, at ``('skunkqueue', queue)``. Every transaction is bounded: it gives up
  after ``?timeout=SECONDS`` (default TIMEOUT, lowered to the backend's ``call_timeout``
  when that is smaller) or ``?retry_limit=N`` retries (default RETRY_LIMIT), whichever
  comes first, with ``BackendUnavailable``.
* ``fdbsim://NAME`` and ``fdbsim+tcp://127.0.0.1:PORT``: this backend over the simulator,
  for tests only; they are opened by ``skunkqueue.testing.fdb_backend``, and this module
  imports nothing of the simulator.

The seed form ``SkunkQueue('demo', **default_cfg)`` means ``fdb://`` (the default cluster).

Key layout, after the queue's prefix, every key a tuple (``fdb.tuple``, the binding's own
encoding, which works without the client library, so the simulator and a cluster see the
same bytes):

* ``('j', id)`` -> the job record: its 12-byte seq, then JSON;
* ``('s', eta, seq, id)`` scheduled and retrying jobs, in due order;
* ``('r', route, eta, seq, id)`` queued jobs, per route in (eta, seq) order; ``seq`` is the
  versionstamp of the put's commit plus the job's place in it (a tuple Versionstamp), so
  producers never conflict on a counter and equal etas leave in commit order;
* ``('u', lease_until, id)`` running jobs, by lease end; ``('o', owner, id)`` by holder;
* ``('x', expires_at, id)`` records with an expiry, for the leader's cleanup;
* ``('c', state, route)`` counts, changed by atomic add (no conflicts between writers);
* ``('l', name)`` leases; ``('h', name)`` schedules (JSON); ``('hr', name)`` each schedule
  name's revision, kept apart (so records of older versions read unchanged) and kept when
  its schedule is removed (so the name stored again never reuses one);
* ``('w', route)`` and ``('w*',)`` wake counters, bumped by atomic add, watched by waiters;
* ``('n', event)`` running jobs of the event (atomic add, every job), read by a claim of
  a job with a concurrency limit, which so conflicts with any change of that count;
  ``('p', event, eta, seq, id)`` queued jobs a claim held back by that limit, out of
  ``('r', ...)``, in the order they go back (``rules.gate_open``).

Contention: claimers read the first ready keys with a snapshot read (no conflict on what
they look at) and declare a read conflict only on the keys they take. The first attempt
takes the first keys in order; an attempt retried after a conflict picks at random among
the first few, so claimers spread over the head of the queue instead of colliding on the
same key again and again.

Limits: a record over 100 kB (FoundationDB's value limit) is refused with a clear error;
a put is written in transactions of at most PUT_BYTES (far inside the 10 MB limit), and
the leader's steps touch at most MAX_BATCH records per transaction.
"""

from __future__ import annotations

import json
import random
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from ..errors import BackendUnavailable, ConfigurationError, SerializationError
from ..model import JobRecord, JobState, Outcome
from .base import Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport, bounded_wait
from .rules import (
    MAX_BATCH,
    apply_outcome,
    bytes_cut,
    cancel,
    check_fence,
    expected_revision_holds,
    fired_state,
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

default_cfg: dict[str, Any] = {"backend": "fdb", "conn_url": "", "dbname": None}

API_VERSION = 710
#: FoundationDB refuses values over 100,000 bytes; a record must fit in one.
MAX_RECORD_BYTES = 100_000
#: Bytes of records one put transaction writes at most (the limit is 10 MB).
PUT_BYTES = 1_000_000
#: A claim retried after a conflict takes one of this many windows of ``limit`` keys at
#: the head of the queue, chosen at random: two such claimers collide only when they
#: choose the same window (random picks of 10 among 40 keys would nearly always overlap).
SPREAD = 4
#: Records one listing transaction reads.
PAGE = 1000
#: Seconds a transaction on a cluster may take, its retries included (URL ``?timeout=``):
#: past it the binding cancels the transaction, even in the middle of a read that waits
#: for an unreachable cluster. (``wait`` registers its watches in such a transaction: if
#: the timeout ends them, the wait wakes early, which the contract allows.)
TIMEOUT = 5.0
#: Retries of one transaction, after conflicts and other retryable errors, before it gives
#: up (URL ``?retry_limit=``).
RETRY_LIMIT = 20
#: FoundationDB's transaction_timed_out: the ``timeout`` option cancelled the transaction.
TIMED_OUT = 1031

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
SCHEDULED, RETRYING = JobState.SCHEDULED, JobState.RETRYING
WAITING_STATES = (SCHEDULED, RETRYING)
ONE = struct.pack("<q", 1)
#: A seq: the 10-byte commit versionstamp and a 2-byte place within the commit.
SEQ_BYTES = 12
STAMP_PLACEHOLDER = b"\x00" * 10  # filled in by the commit


class OpenedDatabase(NamedTuple):
    """What an opener gives the backend for one queue."""

    #: The queue's key prefix: every key of the queue starts with it.
    prefix: bytes
    #: ``run(fn, *args)``: ``fn(tr, *args)`` in a transaction, committed and retried as
    #: FoundationDB prescribes; returns what ``fn`` returned. ``fn`` may run more than
    #: once, so it must be idempotent.
    run: Callable[..., Any]
    #: Whether other processes see the same database (see ``Backend``).
    shared_across_processes: bool = True


#: ``opener(url, queue, pack, call_timeout)``: the database that ``url`` names, for
#: ``queue``; ``pack`` is the tuple layer's ``pack``; ``call_timeout`` the backend's (None
#: or seconds), which bounds each transaction where the opener can.
Opener = Callable[[str, str, Callable[[tuple], bytes], "float | None"], OpenedDatabase]


def _tuple_layer() -> Any:
    try:
        import fdb.tuple
    except ImportError as exc:
        raise ImportError(
            "the FoundationDB backend needs the binding: pip install 'skunkqueue[fdb]'"
        ) from exc
    return fdb.tuple


def run_transaction(
    create_transaction: Callable[[], Any],
    fn: Callable[..., Any],
    *args: Any,
    timeout: float,
    retry_limit: int,
    error: type[Exception],
) -> Any:
    """Run ``fn(tr, *args)`` in a new transaction and commit it, retrying what FoundationDB
    says to retry, within bounds: the loop of ``@fdb.transactional``, which alone retries
    forever.

    The transaction gets the binding's ``timeout`` and ``retry_limit`` options, so the
    client library enforces both (the timeout spans the retries, API 610+); the loop also
    counts retries itself. A timeout, or a retryable ``error`` after ``retry_limit``
    retries, raises ``BackendUnavailable`` from the last error. An ``error`` that
    ``on_error`` will not retry (a misuse, not an outage) propagates as it is, and so does
    any other exception ``fn`` raises, without a retry.
    """
    tr = create_transaction()
    tr.options.set_timeout(max(1, round(timeout * 1000)))  # milliseconds
    tr.options.set_retry_limit(retry_limit)
    retries = 0
    while True:
        try:
            result = fn(tr, *args)
            tr.commit().wait()
            return result
        except error as exc:
            last = exc
        if _code(last) != TIMED_OUT and retries < retry_limit:
            try:
                tr.on_error(last).wait()  # backs off, resets, or raises what it won't retry
            except error as refused:
                if _code(refused) != TIMED_OUT:
                    raise  # not retryable: a misuse, not an outage
                last = refused
            else:
                retries += 1
                continue
        if _code(last) == TIMED_OUT:
            reason = f"timed out after {timeout:g} s"
        else:
            reason = f"not committed after {retries} retries"
        raise BackendUnavailable(f"FoundationDB transaction {reason}: {last}") from last


def _code(err: BaseException) -> int | None:
    return getattr(err, "code", None)


def _limits(url: str, query: str) -> tuple[float, int]:
    """The ``timeout`` and ``retry_limit`` that the URL's query sets, else the defaults."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"timeout", "retry_limit"})
    if unknown:
        raise ConfigurationError(
            f"{url!r}: unknown option {', '.join(unknown)} (known: timeout, retry_limit)"
        )
    try:
        timeout = float(options.get("timeout", TIMEOUT))
        retry_limit = int(options.get("retry_limit", RETRY_LIMIT))
    except ValueError as exc:
        raise ConfigurationError(f"{url!r}: {exc}") from None
    if not 0 < timeout < float("inf") or retry_limit < 0:
        raise ConfigurationError(
            f"{url!r}: timeout must be a positive number of seconds and retry_limit "
            "a count of 0 or more"
        )
    return timeout, retry_limit


def open_cluster(
    url: str, queue: str, pack: Callable[[tuple], bytes], call_timeout: float | None = None
) -> OpenedDatabase:
    """A FoundationDB cluster, ``fdb://CLUSTER_FILE?timeout=S&retry_limit=N``: the queue's
    subspace from the directory layer, and the bounded retry loop ``run_transaction``. A
    ``call_timeout`` lowers the transactions' timeout to it, never raises it."""
    parts = urlsplit(url)
    if parts.scheme != "fdb":
        raise ConfigurationError(
            f"{url!r}: the FoundationDB backend opens fdb:// URLs (fdbsim URLs are "
            "skunkqueue.testing's)"
        )
    timeout, retry_limit = _limits(url, parts.query)
    timeout = bounded_wait(timeout, call_timeout)
    import fdb

    try:
        fdb.api_version(API_VERSION)
    except RuntimeError:
        pass  # already chosen in this process
    except Exception as exc:  # the binding raises a bare Exception without libfdb_c
        raise BackendUnavailable(f"FoundationDB client library not usable: {exc}") from exc
    database = fdb.open((parts.netloc + parts.path) or None)  # None: the default file

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return run_transaction(
            database.create_transaction,
            fn,
            *args,
            timeout=timeout,
            retry_limit=retry_limit,
            error=fdb.FDBError,
        )

    directory = run(lambda tr: fdb.directory.create_or_open(tr, ("skunkqueue", queue)))
    return OpenedDatabase(directory.key(), run)


class FoundationDBBackend(Backend):
    """One queue in a FoundationDB subspace (see the module docstring for the layout)."""

    store_name = "FoundationDB"
    put_unit = f"up to {PUT_BYTES / 1_000_000:g} MB of records"
    clock_source = (
        "each process's own (FoundationDB has no wall clock): keep hosts in step with NTP; "
        "a process whose clock is d seconds ahead promotes jobs, ends leases and takes the "
        "lead up to d seconds early"
    )

    wake_mode = "FoundationDB watches on wake counters"

    def __init__(
        self,
        url: str,
        queue: str,
        opener: Opener = open_cluster,
        *,
        call_timeout: float | None = None,
    ) -> None:
        super().__init__(url, queue, call_timeout=call_timeout)
        self._tuple = _tuple_layer()
        opened = opener(url, queue, self._tuple.pack, self.call_timeout)
        self._prefix, self._transact = opened.prefix, opened.run
        self.shared_across_processes = opened.shared_across_processes
        self._seen: dict[bytes, bytes | None] = {}

    # -- plumbing -----------------------------------------------------------------

    def _k(self, *items: Any) -> bytes:
        return self._prefix + self._tuple.pack(items)

    def _range(self, *items: Any) -> tuple[bytes, bytes]:
        """Every key that starts with the tuple ``items``."""
        start = self._k(*items)
        return start, start + b"\xff"

    def _unpack(self, key: bytes) -> tuple:
        return self._tuple.unpack(key[len(self._prefix) :])

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._transact(fn, *args)

    def _seq_key(self, head: tuple, seq: int | None, place: int, job_id: str) -> bytes:
        """The key ``head + (seq, job_id)``, seq as a tuple Versionstamp element (code
        0x33, then 12 bytes). With ``seq=None`` the commit fills in the stamp: the key ends
        with the stamp's offset, for set_versionstamped_key. Built by hand because the
        binding packs versionstamps only with libfdb_c loaded (unpacking needs nothing)."""
        start = self._k(*head) + b"\x33"
        tail = self._tuple.pack((job_id,))
        if seq is None:
            stamp = STAMP_PLACEHOLDER + struct.pack(">H", place)
            return start + stamp + tail + struct.pack("<I", len(start))
        return start + seq.to_bytes(SEQ_BYTES, "big") + tail

    @staticmethod
    def _seq_of(stamp: Any) -> int:
        """A seq from an unpacked tuple Versionstamp."""
        return int.from_bytes(stamp.tr_version + struct.pack(">H", stamp.user_version), "big")

    @staticmethod
    def _encode(record: JobRecord) -> bytes:
        fields = record.to_dict()
        del fields["seq"]  # stored in front of the JSON, where a commit can stamp it
        data = json.dumps(fields, separators=(",", ":")).encode()
        if len(data) + SEQ_BYTES > MAX_RECORD_BYTES:
            raise SerializationError(
                f"job {record.id}: its record is {len(data):,} bytes, over FoundationDB's "
                f"{MAX_RECORD_BYTES:,}-byte value limit; store large payloads elsewhere "
                "and pass a reference"
            )
        return data

    @staticmethod
    def _decode(value: Any) -> JobRecord:
        data = bytes(value)
        record = JobRecord.from_dict(json.loads(data[SEQ_BYTES:]))
        record.seq = int.from_bytes(data[:SEQ_BYTES], "big")
        return record

    def _read(self, tr: Any, job_id: str, snapshot: bool = False) -> JobRecord | None:
        value = (tr.snapshot if snapshot else tr).get(self._k("j", job_id))
        return self._decode(value) if value.present() else None

    def _count(self, tr: Any, state: str, route: str, n: int) -> None:
        tr.add(self._k("c", state, route), struct.pack("<q", n))

    def _wake(self, tr: Any, route: str | None) -> None:
        tr.add(self._k("w", route) if route is not None else self._k("w*"), ONE)

    def _index(self, tr: Any, r: JobRecord, place: int | None = None) -> None:
        """Write ``r`` and the index keys its state puts it under, counting it. A new
        record (``place`` = its place in this commit) gets its seq from the commit."""
        if place is None:
            tr.set(self._k("j", r.id), r.seq.to_bytes(SEQ_BYTES, "big") + self._encode(r))
            index = tr.set
        else:
            stamp = STAMP_PLACEHOLDER + struct.pack(">H", place)
            tr.set_versionstamped_value(
                self._k("j", r.id), stamp + self._encode(r) + struct.pack("<I", 0)
            )
            index = tr.set_versionstamped_key
        known = r.seq if place is None else None
        if r.state in WAITING_STATES:
            index(self._seq_key(("s", float(r.eta)), known, place or 0, r.id), b"")
        elif r.state == QUEUED:
            index(self._seq_key(("r", r.route, float(r.eta)), known, place or 0, r.id), b"")
            self._wake(tr, r.route)
        elif r.state == RUNNING:
            tr.set(self._k("u", float(r.lease_until or 0.0), r.id), b"")
            tr.set(self._k("o", r.owner, r.id), b"")
        if r.expires_at is not None:
            tr.set(self._k("x", float(r.expires_at), r.id), b"")
        self._count(tr, r.state, r.route, 1)

    def _unindex(self, tr: Any, r: JobRecord) -> None:
        """Remove the index keys of ``r`` as stored (the record itself stays)."""
        if r.state in WAITING_STATES:
            tr.clear(self._seq_key(("s", float(r.eta)), r.seq, 0, r.id))
        elif r.state == QUEUED:
            tr.clear(self._seq_key(("r", r.route, float(r.eta)), r.seq, 0, r.id))
            if r.concurrency is not None:  # it may be held back
                tr.clear(self._seq_key(("p", r.event, float(r.eta)), r.seq, 0, r.id))
        elif r.state == RUNNING:
            tr.clear(self._k("u", float(r.lease_until or 0.0), r.id))
            tr.clear(self._k("o", r.owner, r.id))
        if r.expires_at is not None:
            tr.clear(self._k("x", float(r.expires_at), r.id))
        self._count(tr, r.state, r.route, -1)

    def _check_fence(self, tr: Any, fence: Fence, now: float) -> None:
        # A normal read: a lease that changes hands before this commits fails it.
        check_fence(self._lease_at(tr, fence.name), fence, now)

    # -- jobs ---------------------------------------------------------------------

    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """The unit is one transaction of whole jobs, at most PUT_BYTES of records: every
        record is encoded first, then the transactions commit in order; one that fails
        leaves those before it written and raises before the next begins."""
        records, sizes = self._prepared(jobs, now)
        answers: list[bool] = []
        chunk: list[JobRecord] = []
        used = 0
        for r, size in zip(records, sizes, strict=True):
            if chunk and used + size > PUT_BYTES:
                answers += self._run(self._put_in, chunk, now)
                chunk, used = [], 0
            chunk.append(r)
            used += size
        if chunk:
            answers += self._run(self._put_in, chunk, now)
        return answers

    def _prepared(self, jobs: Sequence[JobRecord], now: float) -> tuple[list[JobRecord], list[int]]:
        """Copies of ``jobs`` in the states a put gives them, and their encoded sizes:
        a record too large for FoundationDB fails here, before any transaction."""
        records = [JobRecord.from_dict(job.to_dict()) for job in jobs]
        sizes = []
        for r in records:
            r.state = state_on_put(r, now)
            sizes.append(len(self._encode(r)))
        return records, sizes

    def _put_in(self, tr: Any, records: list[JobRecord], now: float) -> list[bool]:
        answers = []
        woke_scheduler = False
        placed: set[str] = set()  # a record stamped in this commit cannot be read back
        for r in records:
            if r.id in placed:
                answers.append(False)
                continue
            old = self._read(tr, r.id)
            if old is not None and (old.expires_at is None or old.expires_at > now):
                answers.append(False)
                continue
            if old is not None:
                self._unindex(tr, old)
            self._index(tr, r, place=len(placed))
            placed.add(r.id)
            if r.state in WAITING_STATES and not woke_scheduler:
                self._wake(tr, None)
                woke_scheduler = True
            answers.append(True)
        return answers

    def _get(self, job_id: str, now: float) -> JobRecord | None:
        record = self._run(lambda tr: self._read(tr, job_id, snapshot=True))
        if record is None or (record.expires_at is not None and record.expires_at <= now):
            return None
        return record

    def _all(self) -> Iterator[JobRecord]:
        """Every record of the queue, PAGE keys per transaction (snapshot reads), so a
        long listing never nears the 5 s transaction limit."""
        begin, end = self._range("j")
        while True:
            page = self._run(lambda tr, b=begin: list(tr.snapshot.get_range(b, end, limit=PAGE)))
            yield from (self._decode(kv.value) for kv in page)
            if len(page) < PAGE:
                return
            begin = page[-1].key + b"\x00"

    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Reads the queue's records (not a hot path: status and listings)."""
        if limit <= 0:
            return []
        found = [
            r
            for r in self._all()
            if (r.expires_at is None or r.expires_at > now)
            and (state is None or r.state == state)
            and (route is None or r.route == route)
        ]
        found.sort(key=lambda r: (r.eta, r.seq))
        return found[:limit]

    def _stats(self, now: float) -> Stats:
        def read(tr: Any) -> Stats:
            counts: dict[tuple[str, str], int] = {}
            begin, end = self._range("c")
            for kv in tr.snapshot.get_range(begin, end):
                _, state, route = self._unpack(kv.key)
                counts[(state, route)] = struct.unpack("<q", bytes(kv.value))[0]
            # Expired records the leader has not deleted yet still count in ('c', ...).
            begin, _ = self._range("x")
            for kv in tr.snapshot.get_range(begin, self._k("x", float(now)) + b"\xff"):
                stale = self._read(tr, self._unpack(kv.key)[2], snapshot=True)
                if stale is not None:
                    key = (stale.state, stale.route)
                    counts[key] = counts.get(key, 0) - 1
            begin, end = self._range("s")
            first = list(tr.snapshot.get_range(begin, end, limit=1))
            next_due = self._unpack(first[0].key)[1] if first else None
            return Stats({k: n for k, n in counts.items() if n > 0}, next_due)

        return self._run(read)

    def _claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        wanted = limit  # the base caps it at MAX_BATCH
        if wanted <= 0 or not routes:
            return []
        attempts = [0]

        def take_some(tr: Any) -> list[JobRecord]:
            attempts[0] += 1
            heads = []  # (eta, seq, id, key) of the first ready keys of each route
            for route in dict.fromkeys(routes):
                begin, end = self._range("r", route)
                for kv in tr.snapshot.get_range(begin, end, limit=wanted * SPREAD):
                    _, _, eta, stamp, job_id = self._unpack(kv.key)
                    heads.append((eta, self._seq_of(stamp), job_id, kv.key))
            heads.sort()
            heads = heads[: wanted * SPREAD]
            if attempts[0] == 1 or len(heads) <= wanted:
                picks = heads[:wanted]
            else:  # retried after a conflict: one random window of the queue's head
                window = random.randrange(len(heads) // wanted)  # full windows only
                picks = heads[window * wanted : (window + 1) * wanted]
            chosen: list[JobRecord] = []  # read first, written once none has a limit
            used = 0  # payload bytes taken, against max_bytes
            for _, _, job_id, key in picks:
                if max_bytes is None:
                    tr.add_read_conflict_key(key)  # only what we take can conflict
                    r = self._read(tr, job_id)
                else:
                    # Its size decides first, so the job the bound leaves behind is read
                    # without a conflict: another claimer taking it is no reason to retry.
                    r = self._read(tr, job_id, snapshot=True)
                    if r is not None and r.state == QUEUED:
                        size = payload_size(r.payload)
                        if not bytes_cut([size], max_bytes, len(chosen), used):
                            break
                        used += size
                        tr.add_read_conflict_key(key)
                        tr.add_read_conflict_key(self._k("j", job_id))
                if r is None or r.state != QUEUED:
                    continue
                if r.concurrency is not None:  # nothing written yet: claim by the limits
                    return self._take_gated(tr, routes, owner, now, lease, wanted, max_bytes)
                chosen.append(r)
            for r in chosen:
                self._unindex(tr, r)
                take(r, owner, now, lease)
                self._index(tr, r)
                self._count_running(tr, r.event, 1)
            return chosen

        return self._run(take_some)

    def _take_gated(
        self,
        tr: Any,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        wanted: int,
        max_bytes: int | None,
    ) -> list[JobRecord]:
        """A claim that met a job with a concurrency limit (the transaction has written
        nothing yet): in rounds, the first ready keys in order, each taken if its limit
        lets it through and held back under ``('p', ...)`` if not, until the batch is
        full, the queues run out, ``max_bytes`` cuts, or MAX_BATCH were held back.
        Reads here conflict (the heads, the records, the running counts), so the limit
        holds against every concurrent claim and finish."""
        running: dict[str, int] = {}
        taken: list[JobRecord] = []
        used, held = 0, 0
        while len(taken) < wanted and held < MAX_BATCH:
            heads = []
            for route in dict.fromkeys(routes):
                begin, end = self._range("r", route)
                for kv in tr.get_range(begin, end, limit=wanted - len(taken)):
                    _, _, eta, stamp, job_id = self._unpack(kv.key)
                    heads.append((eta, self._seq_of(stamp), job_id))
            heads = sorted(heads)[: wanted - len(taken)]
            if not heads:
                break
            refused = cut = False
            for _, _, job_id in heads:
                r = self._read(tr, job_id)
                if r is None or r.state != QUEUED:
                    continue
                if r.concurrency is not None and r.event not in running:
                    value = tr.get(self._k("n", r.event))
                    running[r.event] = (
                        max(0, struct.unpack("<q", bytes(value))[0]) if value.present() else 0
                    )
                if not gate_open(r, running.get(r.event, 0)):  # still queued, and counted so
                    tr.clear(self._seq_key(("r", r.route, float(r.eta)), r.seq, 0, r.id))
                    tr.set(self._seq_key(("p", r.event, float(r.eta)), r.seq, 0, r.id), b"")
                    refused = True
                    held += 1
                    if held >= MAX_BATCH:
                        break
                    continue
                size = payload_size(r.payload)
                if not bytes_cut([size], max_bytes, len(taken), used):
                    cut = True
                    break
                used += size
                self._unindex(tr, r)
                take(r, owner, now, lease)
                self._index(tr, r)
                self._count_running(tr, r.event, 1)
                if r.event in running:
                    running[r.event] += 1
                taken.append(r)
            if cut or not refused:
                break
        return taken

    def _count_running(self, tr: Any, event: str, n: int) -> None:
        tr.add(self._k("n", event), struct.pack("<q", n))

    def _left_running(self, tr: Any, events: Sequence[str], counted: bool = True) -> None:
        """Jobs of ``events`` (one name per job) left ``running`` (``counted``: their
        count goes down), or queued jobs with a limit were cancelled: as many held-back
        jobs of each event, first in order, go back to their route's ready keys."""
        for event, n in Counter(events).items():
            if counted:
                self._count_running(tr, event, -n)
            begin, end = self._range("p", event)
            for kv in tr.get_range(begin, end, limit=n):
                tr.clear(kv.key)
                _, _, eta, stamp, job_id = self._unpack(kv.key)
                r = self._read(tr, job_id)
                if r is not None and r.state == QUEUED:
                    self._index(tr, r)
                    self._count(tr, r.state, r.route, -1)  # _index counted it again

    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        def extend(tr: Any) -> set[str]:
            begin, end = self._range("o", owner)
            held = [self._unpack(kv.key)[2] for kv in tr.get_range(begin, end)]
            if job_ids is not None:
                held = [i for i in held if i in set(job_ids)]
            renewed = set()
            for job_id in held:
                r = self._read(tr, job_id)
                if r is None or r.state != RUNNING or r.owner != owner:
                    continue
                self._unindex(tr, r)
                r.lease_until = now + lease
                self._index(tr, r)
                renewed.add(job_id)
            if renewed and lease <= 0:
                self._wake(tr, None)  # given up: the leader should recover them now
            return renewed

        return self._run(extend)

    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        answers: list[bool] = []
        for start in range(0, len(outcomes), MAX_BATCH):
            answers += self._run(self._finish_in, outcomes[start : start + MAX_BATCH], owner, now)
        return answers

    def _finish_in(
        self, tr: Any, outcomes: Sequence[Outcome], owner: str, now: float
    ) -> list[bool]:
        answers = []
        left: list[str] = []
        for outcome in outcomes:
            r = self._read(tr, outcome.job_id)
            if r is None or r.state != RUNNING or r.owner != owner:
                answers.append(False)
                continue
            self._unindex(tr, r)
            apply_outcome(r, outcome, now)
            self._index(tr, r)
            if r.state == RETRYING:
                self._wake(tr, None)
            answers.append(True)
            left.append(r.event)
        self._left_running(tr, left)
        return answers

    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """Walks the owner's ``('o', owner, id)`` keys (as renew does), MAX_BATCH per
        transaction, until none is left."""
        begun = set(started)

        def hand_back(tr: Any) -> tuple[dict[str, str], bool]:
            begin, end = self._range("o", owner)
            held = list(tr.get_range(begin, end, limit=MAX_BATCH))
            released = {}
            left: list[str] = []
            for kv in held:
                job_id = self._unpack(kv.key)[2]
                r = self._read(tr, job_id)
                if r is None or r.state != RUNNING or r.owner != owner:
                    tr.clear(kv.key)  # a stale entry; clearing it lets the walk end
                    continue
                self._unindex(tr, r)
                release_held(r, begun, now)
                self._index(tr, r)  # a job queued again wakes its route's waiters
                released[job_id] = r.state
                left.append(r.event)
            self._left_running(tr, left)
            return released, len(held) >= MAX_BATCH

        released: dict[str, str] = {}
        while True:
            batch, more = self._run(hand_back)
            released.update(batch)
            if not more:
                return released

    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]:
        def cancel_all(tr: Any) -> list[bool]:
            answers = []
            gated: list[str] = []
            stopped: list[str] = []
            for job_id in job_ids:
                r = self._read(tr, job_id)
                after = None if r is None else replace(r)
                # A running job leaves its lease and owner keys through _unindex below.
                if after is None or not cancel(after, now, reason, running):
                    answers.append(False)
                    continue
                self._unindex(tr, r)
                self._index(tr, after)
                answers.append(True)
                if r.state == QUEUED and r.concurrency is not None:
                    gated.append(r.event)
                elif r.state == RUNNING:
                    stopped.append(r.event)  # a slot of its event is free
            self._left_running(tr, gated, counted=False)
            self._left_running(tr, stopped)
            return answers

        return self._run(cancel_all)

    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """One transaction; each retried record is written anew with a seq stamped by
        the commit, as a put's are, so it joins the back of its route's queue."""

        def retry_all(tr: Any) -> list[bool]:
            answers = []
            placed: set[str] = set()  # a record stamped in this commit cannot be read back
            for job_id in job_ids:
                r = None if job_id in placed else self._read(tr, job_id)
                after = None if r is None else replace(r)
                if after is None or not retry(after, now):
                    answers.append(False)
                    continue
                self._unindex(tr, r)
                self._index(tr, after, place=len(placed))
                placed.add(job_id)
                answers.append(True)
            return answers

        return self._run(retry_all)

    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:

        def step(tr: Any) -> SweepReport:
            self._check_fence(tr, fence, now)
            report = SweepReport()
            begin, _ = self._range("s")
            due = list(tr.get_range(begin, self._k("s", float(now)) + b"\xff", limit=limit))
            for kv in due:
                r = self._read(tr, self._unpack(kv.key)[3])
                if r is None or r.state not in WAITING_STATES:
                    continue
                self._unindex(tr, r)
                r.state = QUEUED
                self._index(tr, r)
                report.promoted += 1
            begin, _ = self._range("u")
            lapsed = list(tr.get_range(begin, self._k("u", float(now)), limit=limit))  # < now
            left: list[str] = []
            for kv in lapsed:
                r = self._read(tr, self._unpack(kv.key)[2])
                if r is None or r.state != RUNNING:
                    continue
                self._unindex(tr, r)
                recover(r, now)
                self._index(tr, r)
                left.append(r.event)
                if r.state == JobState.ERROR:
                    report.failed += 1
                else:
                    report.recovered += 1
            self._left_running(tr, left)
            begin, _ = self._range("x")
            expired = list(tr.get_range(begin, self._k("x", float(now)) + b"\xff", limit=limit))
            for kv in expired:
                job_id = self._unpack(kv.key)[2]
                r = self._read(tr, job_id)
                tr.clear(kv.key)
                if r is not None and r.expires_at is not None and r.expires_at <= now:
                    self._unindex(tr, r)
                    tr.clear(self._k("j", job_id))
                    report.expired += 1
            report.more = len(due) >= limit or len(lapsed) >= limit or len(expired) >= limit
            report.next_due = self._next_due(tr)
            return report

        return self._run(step)

    def _next_due(self, tr: Any) -> float | None:
        times = []
        for kind in ("s", "u"):
            begin, end = self._range(kind)
            first = list(tr.snapshot.get_range(begin, end, limit=1))
            if first:
                times.append(self._unpack(first[0].key)[1])
        return min(times) if times else None

    # -- leases -------------------------------------------------------------------

    def _lease_at(self, tr: Any, name: str) -> Lease | None:
        value = tr.get(self._k("l", name))
        if not value.present():
            return None
        data = json.loads(bytes(value))
        return Lease(name, data["owner"], data["token"], data["until"], data.get("info") or {})

    def _set_lease(self, tr: Any, lease: Lease) -> None:
        data = {
            "owner": lease.owner,
            "token": lease.token,
            "until": lease.until,
            "info": lease.info,
        }
        tr.set(self._k("l", lease.name), json.dumps(data).encode())

    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        def take(tr: Any) -> Lease | None:
            lease = taken_lease(self._lease_at(tr, name), name, owner, now, ttl, info or {})
            if lease is not None:
                self._set_lease(tr, lease)
            return lease

        return self._run(take)

    def _release_lease(self, name: str, owner: str) -> bool:
        def release(tr: Any) -> bool:
            current = self._lease_at(tr, name)
            if current is None or current.owner != owner:
                return False
            self._set_lease(tr, Lease(name, "", current.token, 0.0, {}))
            self._wake(tr, None)  # a standby may campaign now
            return True

        return self._run(release)

    def _lease_range(self, prefix: str) -> tuple[bytes, bytes]:
        # A string element is 0x02, its UTF-8 bytes (0x00 escaped), 0x00: names with the
        # prefix lie between the prefix's bytes and those bytes followed by 0xff.
        start = self._k("l") + b"\x02" + prefix.encode().replace(b"\x00", b"\x00\xff")
        return start, start + b"\xff"

    def _leases(self, prefix: str, now: float) -> list[Lease]:
        begin, end = self._lease_range(prefix)

        def read(tr: Any) -> list[Lease]:
            found = []
            for kv in tr.snapshot.get_range(begin, end):
                name = self._unpack(kv.key)[1]
                data = json.loads(bytes(kv.value))
                if data["owner"] and data["until"] >= now:
                    found.append(
                        Lease(name, data["owner"], data["token"], data["until"], data["info"])
                    )
            return found

        return sorted(self._run(read), key=lambda lease: lease.name)

    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        begin, end = self._lease_range(prefix)

        def forget(tr: Any) -> int:
            # A plain (not snapshot) read: a lease renewed meanwhile makes this conflict.
            forgotten = 0
            for kv in tr.get_range(begin, end, limit=PAGE):
                if json.loads(bytes(kv.value))["until"] < before:
                    tr.clear(kv.key)
                    forgotten += 1
                    if forgotten >= min(limit, MAX_BATCH):
                        break
            return forgotten

        return self._run(forget)

    # -- schedules ----------------------------------------------------------------

    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool:
        data = {
            "spec": schedule.spec,
            "template": schedule.template,
            "next_fire": schedule.next_fire,
            "updated_at": schedule.updated_at,
            "state": schedule.state,
        }
        encoded = json.dumps(data).encode()

        def save(tr: Any) -> bool:
            if fence is not None:
                self._check_fence(tr, fence, now)
            stored = self._schedule_at(tr, schedule.name)
            revision = None if stored is None else stored.revision
            if not expected_revision_holds(revision, expected_revision):
                return False
            self._write_schedule(tr, schedule.name, encoded)
            return True

        return self._run(save)

    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool:
        # At most MAX_BATCH records (the base's cap), each under the value limit.
        records, _ = self._prepared(jobs, now)

        def fire(tr: Any) -> bool:
            self._check_fence(tr, fence, now)
            stored = self._schedule_at(tr, read.name)
            if stored is None or not unchanged_since(stored.revision, read.revision):
                return False
            self._put_in(tr, records, now)
            data = {
                "spec": stored.spec,
                "template": stored.template,
                "next_fire": next_fire,
                "updated_at": now,
                "state": fired_state(stored.state, state),
            }
            self._write_schedule(tr, read.name, json.dumps(data).encode())
            return True

        return self._run(fire)

    def _schedule_at(self, tr: Any, name: str) -> ScheduleRecord | None:
        """The stored schedule ``name`` with its revision, read so that a change to either
        before this transaction commits fails it."""
        value = tr.get(self._k("h", name))
        if not value.present():
            return None
        return self._schedule(name, bytes(value), self._revision_at(tr, name))

    def _revision_at(self, tr: Any, name: str) -> int:
        """The name's last revision; 0 for a name written only by older versions."""
        value = tr.get(self._k("hr", name))
        return int(bytes(value)) if value.present() else 0

    @staticmethod
    def _schedule(name: str, data: bytes, revision: int) -> ScheduleRecord:
        return ScheduleRecord(name=name, **json.loads(data), revision=revision)

    def _write_schedule(self, tr: Any, name: str, data: bytes) -> None:
        """Store a schedule's JSON under its name's next revision (read in this
        transaction: a concurrent write of the name conflicts)."""
        tr.set(self._k("h", name), data)
        tr.set(self._k("hr", name), str(self._revision_at(tr, name) + 1).encode())

    def _schedules(self) -> list[ScheduleRecord]:
        def read(tr: Any) -> list[ScheduleRecord]:
            begin, end = self._range("hr")
            revisions = {
                self._unpack(kv.key)[1]: int(bytes(kv.value))
                for kv in tr.snapshot.get_range(begin, end)
            }
            begin, end = self._range("h")
            return [
                self._schedule(name, bytes(kv.value), revisions.get(name, 0))
                for kv in tr.snapshot.get_range(begin, end)
                for name in [self._unpack(kv.key)[1]]
            ]

        return sorted(self._run(read), key=lambda s: s.name)

    def _remove_schedule(self, name: str) -> bool:
        def remove(tr: Any) -> bool:
            key = self._k("h", name)  # ('hr', name) stays: the name's revisions go on
            found = tr.get(key).present()
            tr.clear(key)
            return found

        return self._run(remove)

    # -- waiting ------------------------------------------------------------------

    def _wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        """Watch the wake counters of ``routes`` (or the scheduler's); return at once if one
        moved since this backend last looked, else when a watch fires or at ``timeout``."""
        if timeout <= 0:
            return
        keys = [self._k("w", r) for r in routes] if routes is not None else [self._k("w*")]
        woken = threading.Event()

        def register(tr: Any) -> tuple[dict[bytes, bytes | None], list[Any]]:
            values = {}
            for key in keys:
                value = tr.get(key)
                values[key] = bytes(value) if value.present() else None
            return values, [tr.watch(key) for key in keys]

        values, watches = self._run(register)
        moved = any(self._seen.get(key, b"unseen") != value for key, value in values.items())
        self._seen.update(values)
        try:
            if not moved:
                for watch in watches:
                    watch.on_ready(lambda _: woken.set())
                self._began_waiting()
                woken.wait(timeout)
        finally:
            for watch in watches:
                watch.cancel()
