"""The backend contract: what every store (memory, SQLite, Redis, MongoDB, FoundationDB) does.

One ``Backend`` instance serves one queue. Every time-dependent verb takes ``now``
(epoch seconds) from the caller, so tests drive etas and lease expiry with a fake
clock. Every change to claimed work names its ``owner`` and says whether it took
effect; the leader's writes carry a ``Fence`` and raise ``LeaseLost`` when the fence
is stale. The contract test suite (tests/contract/) is the executable form of these
docstrings and runs unchanged against every backend.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..checks import seconds
from ..config import redact
from ..errors import BackendUnavailable
from ..model import (
    SCHEDULER_LEASE,
    WORKER_LEASE_PREFIX,
    Fence,
    JobRecord,
    Lease,
    Outcome,
    ScheduleRecord,
    Stats,
    SweepReport,
)
from . import rules
from .clock import StoreClock

T = TypeVar("T")

__all__ = [
    "SCHEDULER_LEASE",
    "WORKER_LEASE_PREFIX",
    "Backend",
    "Fence",
    "Lease",
    "ScheduleRecord",
    "Stats",
    "SweepReport",
    "bounded_wait",
    "checked_call_timeout",
]


def checked_call_timeout(call_timeout: Any) -> float | None:
    """``call_timeout`` as given to ``open_backend``: ``None``, or positive finite seconds."""
    return None if call_timeout is None else seconds("call_timeout", call_timeout)


def bounded_wait(configured: float, call_timeout: float | None) -> float:
    """How long a backend lets one wait on its store last: its own setting (the URL's, or
    its default), lowered to ``call_timeout`` when the caller gave one, never raised by it."""
    return configured if call_timeout is None else min(configured, call_timeout)


class Backend(ABC):
    """One queue's storage.

    The public verbs below are the contract, and they are the same for every store: each
    checks its input first (``rules.py``: nothing malformed reaches a store), caps one
    step at ``rules.MAX_BATCH`` records, and reports the store's own "cannot reach it"
    errors (``unreachable``) as ``BackendUnavailable``. A backend implements the
    underscored verbs (``_put``, ``_claim``, ...), each atomically as its docstring here
    says, deciding what happens to a record by the rule book in ``rules.py``.

    Bounded calls. ``call_timeout`` (seconds; ``None``, the default, leaves the store's
    own timeouts) is the longest one call may wait on a store that stops answering (a
    half-open connection, a frozen server, a lock nobody releases): past it the call
    raises ``BackendUnavailable``. It exists for callers whose time is bounded by
    something else, such as a worker's heartbeat, whose renewals are worth nothing once
    the lease they renew has lapsed. Each backend maps it to its own setting, and takes
    the smaller where the URL or its default sets that lower (``bounded_wait``): Redis,
    the socket's connect and reply timeouts, and no resend of a call that timed out (it
    would wait again; one that met a closed connection is resent once); MongoDB, pymongo's client-side operation timeout
    around the whole call (its queries, retries and server selection included; the smaller
    of it, the URL's ``timeoutMS`` and the socket timeout); FoundationDB, each
    transaction's ``timeout`` option (its retries included); SQLite, the busy timeout (how
    long a call waits for another writer's lock). Memory has nothing to wait on, and the
    FoundationDB simulator (a test double) does not model timeouts.
    """

    #: Whether separate processes opening the same URL see the same data.
    shared_across_processes: bool = True
    #: How ``wait`` learns of new work, as ``skunq status`` shows it.
    wake_mode: str = "polling every 5 ms"
    #: Called by ``wait`` once it is listening, just before it blocks: tests set it to
    #: change the store during a wait rather than before one. ``None`` otherwise.
    wait_began: Callable[[], None] | None = None

    #: What this store's driver raises when the store cannot be reached or used (a lost
    #: connection, a timeout, a locked or unreadable file). Every verb reports it as
    #: ``BackendUnavailable``, naming the store and keeping the cause. Set per backend.
    unreachable: tuple[type[BaseException], ...] = ()
    #: How messages name the store ("Redis", "SQLite", ...).
    store_name: str = "the store"
    #: What one atomic step of ``put`` writes: "the whole call", or the part of a larger
    #: call that each step takes ("100 jobs"). Set per backend, from its own limits; ``put``
    #: says what it means when a call fails part-way.
    put_unit: str

    #: How this store tells the time (``skunq status`` and the README's "Clocks" say it).
    clock_source: str = "this process's clock"
    #: How far a reading of the store's clock may be off because of its precision: a
    #: process's own clock is trusted while it agrees with the store's within this.
    clock_tolerance: float = 0.0
    #: How many readings a measurement may take, keeping the fastest round trip.
    clock_attempts: int = 3
    #: How coarsely the store tells the time (seconds): a reading may be this far behind.
    clock_resolution: float = 0.0

    def __init__(self, url: str, queue: str, *, call_timeout: float | None = None) -> None:
        self.url = url
        self.queue = queue
        #: The longest one call may wait on a store that stops answering; ``None``: the
        #: store's own timeouts (see the class docstring).
        self.call_timeout = checked_call_timeout(call_timeout)
        self._clock: StoreClock | None = None

    # -- the clock ----------------------------------------------------------------

    def now(self) -> float:
        """The time every decision about this queue is made by: the store's clock where
        the store has one (Redis, MongoDB, the file system under SQLite), read now and
        then and carried forward on this process's monotonic clock; else this process's
        own. Callers pass it as ``now`` to the verbs below."""
        return self._store_clock().now()

    def latest(self) -> float:
        """``now()`` plus the uncertainty of the reading behind it: never behind the
        store's clock, as ``now()`` is never ahead of it. For recording a moment that has
        passed (a job's start) and for counting a delay from now (an eta ``now + delay``,
        a retry's backoff), so that neither comes out earlier than it was."""
        return self._store_clock().latest()

    def clock_offset(self) -> float:
        """Seconds this process's wall clock is behind the store's (negative: ahead), as
        last measured; 0 where the store has no clock of its own."""
        return self._store_clock().offset()

    def _store_clock(self) -> StoreClock:
        clock = self._clock
        if clock is None:
            read = self._store_time if type(self)._store_time is not Backend._store_time else None
            clock = self._clock = StoreClock(
                None if read is None else (lambda: self._calling(read)),
                tolerance=self.clock_tolerance,
                attempts=self.clock_attempts,
                resolution=self.clock_resolution,
            )
        return clock

    def _store_time(self) -> float:
        """The store's current time in epoch seconds, for stores that have a clock;
        backends without one leave this unimplemented."""
        raise NotImplementedError

    def _calling(self, verb: Callable[..., T], *args: Any) -> T:
        """Run one store verb, translating the driver's "cannot reach it" errors."""
        try:
            return verb(*args)
        except self.unreachable as exc:
            raise BackendUnavailable(f"{self.store_name} at {redact(self.url)!r}: {exc}") from exc

    # -- jobs ---------------------------------------------------------------------

    def put(self, jobs: Sequence[JobRecord], now: float, *, checked: bool = False) -> list[bool]:
        """Store new jobs; one answer per job, ``False`` where the id already exists.

        A job whose ``eta`` is after ``now`` is stored ``scheduled`` in the time index;
        otherwise it is stored ``queued`` on its route (``retrying`` and ``cancelled``
        states given by the caller are kept as given). The backend assigns ``seq`` so
        that jobs with equal etas leave in the order they were put. An id whose record
        exists and has not expired answers ``False`` and its record is left untouched
        (idempotent fire); an id whose record is past its ``expires_at`` is free again,
        and its record is replaced.

        What a call writes, and what a failure leaves behind:

        * Every record is checked (``rules.check_jobs``) before anything is written: a
          malformed record fails the whole call, and nothing of it is stored. (``Event``
          passes ``checked=True``: it builds records only from what it validated when the
          call was fired, and every fire would pay for checking them again.)
        * Each job is written whole or not at all: its record and its index entries
          together.
        * A call is written in atomic units, each stored entirely or not at all. The
          unit (each backend's ``put_unit``) is: memory, "the whole call" (one lock);
          SQLite, "the whole call" (one transaction); Redis, "100 jobs" (one script call
          each, in order); MongoDB, "each job" (one unordered ``insert_many``);
          FoundationDB, "up to 1 MB of records" (one transaction each, in order, whole
          jobs only).
        * When a call fails part-way (a lost connection, a store that is full or refuses
          a write, a record the backend cannot encode), the units before the failure
          stay written, the failed unit is not, and no later unit is, with two
          exceptions. On one Redis server the chunks are pipelined: Redis already holds
          the later ones, runs them after refusing one (out of memory, say), and stores
          those it can take. MongoDB's unordered insert tries every job whatever its
          place: a job it refuses stops no other.
        * Putting the same ids again completes the call: the ids stored answer ``False``
          and are left untouched, the others are written. (So a backend that sends a
          call again by itself answers ``False`` for the jobs its first attempt stored:
          Redis after a lost connection, FoundationDB after a commit of unknown outcome.)

        The failure is raised. A store that cannot be reached or cannot take writes
        (a lost connection, SQLite's full disk, Redis out of memory, a FoundationDB
        transaction out of time or retries) raises ``BackendUnavailable`` naming it, with
        the driver's error as ``__cause__``. Anything else is raised as it is: a write the
        store refuses (MongoDB's ``BulkWriteError`` lists the jobs it refused), a record
        that cannot be encoded.
        """
        if not checked:
            rules.check_jobs(jobs)
        return self._calling(self._put, jobs, now)

    @abstractmethod
    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]: ...

    def get(self, job_id: str, now: float) -> JobRecord | None:
        """The job's record, or ``None`` if unknown or past its ``expires_at``."""
        return self._calling(self._get, job_id, now)

    @abstractmethod
    def _get(self, job_id: str, now: float) -> JobRecord | None: ...

    def list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Unexpired jobs, filtered by state and route, oldest eta first."""
        state = rules.checked_state(state)
        limit = rules.checked_count("limit", limit)
        return self._calling(self._list_jobs, now, state, route, limit)

    @abstractmethod
    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]: ...

    def stats(self, now: float) -> Stats:
        """Counts of unexpired jobs per (state, route), and the earliest pending eta."""
        return self._calling(self._stats, now)

    @abstractmethod
    def _stats(self, now: float) -> Stats: ...

    def claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        """Atomically take up to ``limit`` queued jobs from ``routes`` for ``owner``.

        Jobs leave in (eta, seq) order across the given routes. Each taken job becomes
        ``running`` with ``owner``, ``lease_until = now + lease``, ``started_at = now``
        (the claim's time as it is: a job taken before its eta shows it) and
        ``deliveries + 1``. No job is ever handed to two claimers. A backend
        may take fewer than ``limit`` per call to bound one call's work; the caller claims
        again for more.

        With ``max_bytes``, the batch also stops before the first job that would bring
        the payloads taken over ``max_bytes`` in total, except that the first job is
        always taken, whatever its size, so a single large job is still served. A
        payload's size is ``rules.payload_size``: its UTF-8 length as stored, which is
        ``len(record.payload)`` for the ASCII text SkunkQueue's serializers write. The
        cut keeps the order: a job left behind by the bound stays ``queued``, untouched,
        and is the first one the next claim on its routes takes. ``None``: no bound.

        Concurrency limits (``rules.gate_open``), decided in the same atomic step: a job
        whose ``concurrency`` is n is taken only while fewer than n jobs of its event are
        ``running`` in the queue, counting every running job of the event (whatever its
        own limit or route) and the ones this claim took already. A job refused so stays
        ``queued`` (``stats``, ``list_jobs`` and ``get`` show it so) but is held back
        aside, where no later claim reads it again, and the claim goes on with the jobs
        behind it, keeping (eta, seq) order among what it takes; it holds back at most
        ``rules.MAX_BATCH`` jobs a call, to bound its work. Whenever a job of the event
        leaves ``running`` (``finish`` with any outcome, ``release``, ``sweep``'s recovery
        or lost-deliveries failure), one held-back job of the event, the first in (eta,
        seq) order, goes back to its route's queue in that same step and wakes its
        waiting workers; so does ``cancel`` of a queued job that has a limit (``cancel``
        of a held-back job removes it). Jobs without a limit cost nothing extra beyond
        keeping each event's running count.
        """
        rules.check_routes(routes)
        rules.check_positive("lease", lease)
        if not routes:
            return []
        limit = min(rules.checked_count("limit", limit), rules.MAX_BATCH)
        if max_bytes is not None:
            rules.checked_count("max_bytes", max_bytes, minimum=0)
        return self._calling(self._claim, routes, owner, now, lease, limit, max_bytes)

    @abstractmethod
    def _claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]: ...

    def renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        """Set ``lease_until = now + lease`` on running jobs held by ``owner``.

        Only ``job_ids`` when given, else every job the owner holds; returns the ids
        the owner still holds. ``lease`` must be a positive number of seconds: a worker
        known dead has its jobs handed back with ``release``.
        """
        rules.check_positive("lease", lease)
        rules.check_ids(job_ids)
        return self._calling(self._renew, owner, now, lease, job_ids)

    @abstractmethod
    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]: ...

    def finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        """Record outcomes of jobs held by ``owner``; one answer per outcome.

        Takes effect only where the job is ``running`` and held by ``owner`` (else
        ``False``: the lease was lost and someone else may have the job). ``complete``
        and ``error`` store result/error, ``attempts + 1``, ``finished_at = now`` and
        ``expires_at = now + result_ttl``. ``retrying`` stores the error, ``attempts + 1``
        and the new ``eta``. An outcome's ``started_at``, when given, replaces the claim's
        in all three. ``queued`` hands the job back unrun: ``deliveries - 1``,
        eta unchanged, so it is taken again first. Owner and lease are cleared.
        """
        rules.check_outcomes(outcomes)
        return self._calling(self._finish, outcomes, owner, now)

    @abstractmethod
    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]: ...

    def release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """Hand back at once every job ``owner`` holds in state ``running``: its worker is
        known dead (a pool saw its child process exit).

        A job whose id is in ``started`` had begun running: its delivery counts, exactly
        as when its lease lapses in ``sweep`` (``rules.recover``): ``queued`` again,
        or ``error`` with reason "lost deliveries" (``finished_at = now``, ``expires_at =
        now + result_ttl``) once ``max_deliveries`` deliveries have been lost. Any other
        held job was claimed but never started: it goes back unrun, exactly like a
        ``queued`` outcome in ``finish`` (``deliveries - 1``, eta and seq unchanged, so it
        leaves before jobs queued after it). Owner and lease are cleared either way.

        Returns ``{job_id: new_state}`` for every job handed back; a second call returns
        ``{}``. Not fenced: any process may call it, and it touches only jobs that are
        ``running`` and held by ``owner`` (ids in ``started`` that it does not hold are
        ignored). Jobs queued again wake waiting workers as a put of queued jobs does.
        A backend may work in bounded batches, but everything is handed back when the
        call returns. Cost: by the owner's index where the backend keeps one (Redis,
        MongoDB, FoundationDB); SQLite walks the queue's running jobs, and memory every
        job of the store.
        """
        return self._calling(self._release, owner, now, started)

    @abstractmethod
    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]: ...

    def cancel(
        self, job_ids: Sequence[str], now: float, reason: str, *, running: bool = False
    ) -> list[bool]:
        """Cancel jobs that are ``scheduled``, ``queued`` or ``retrying``; one answer each.

        A cancelled job keeps ``error = {"reason": reason}``, ``finished_at = now`` and
        expires after its ``result_ttl``. Finished jobs are left as they are (``False``),
        and so are running ones unless ``running`` is true (``rules.cancel``).

        With ``running``, a ``running`` job is cancelled in the same atomic step: its owner
        and lease are cleared and it leaves the running and held indexes, while
        ``attempts`` and ``deliveries`` stay as they are (its run did not conclude). Its
        holder learns of it from ``renew``, which no longer returns the id, and stops the
        job; the holder's ``finish`` for it answers ``False`` and writes nothing, so the
        reason stays.
        """
        rules.check_ids(job_ids)
        rules.check_reason(reason)
        rules.check_flag("running", running)
        return self._calling(self._cancel, job_ids, now, reason, running)

    @abstractmethod
    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]: ...

    def retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """Put finished jobs back on their route by hand; one answer per id.

        Atomically per id (``rules.retry``): a record that exists, has not expired and is
        ``error`` or ``cancelled`` becomes ``queued`` on its route with ``eta = now`` and a
        new seq (it leaves after every job already queued there); its error is appended
        to ``history`` and cleared, as are its result, ``finished_at``, ``expires_at``,
        owner and lease; ``attempts`` stays and ``deliveries`` becomes ``attempts``, so
        ``max_deliveries`` counts lost deliveries afresh. Waiting workers are woken as a
        put of queued jobs wakes them. Any other id (unknown, expired, not finished,
        complete, or a second copy of an id in this call) answers ``False`` and nothing
        is written for it. At most ``rules.MAX_BATCH`` ids per call.
        """
        rules.check_ids(job_ids)
        rules.check_retry_count(job_ids)
        if not job_ids:
            return []
        return self._calling(self._retry, job_ids, now)

    @abstractmethod
    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]: ...

    def sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:
        """The leader's step: move what has come due, in bounded batches.

        Raises ``LeaseLost`` (writing nothing) unless ``fence`` is the current, unexpired
        holder of its lease at ``now``. Then: ``scheduled``/``retrying`` jobs with
        ``eta <= now`` become ``queued``; ``running`` jobs with ``lease_until < now``
        become ``queued`` again, or ``error`` with reason "lost ... deliveries" once
        ``max_deliveries`` deliveries have been lost; records past ``expires_at`` are
        deleted. ``more`` says a batch was full; ``next_due`` is the earliest eta or
        lease expiry still pending.
        """
        limit = min(rules.checked_count("limit", limit), rules.MAX_BATCH)
        return self._calling(self._sweep, now, fence, limit)

    @abstractmethod
    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport: ...

    # -- leases (leader election, worker liveness) --------------------------------

    def acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        """Take or renew lease ``name`` for ``owner`` until ``now + ttl``.

        Succeeds if the lease is free, expired at ``now``, or already held by ``owner``;
        returns ``None`` if another owner holds it. The token grows by one whenever the
        owner changes and stays the same on renewal.
        """
        rules.check_positive("ttl", ttl)
        return self._calling(self._acquire_lease, name, owner, now, ttl, info)

    @abstractmethod
    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None: ...

    def release_lease(self, name: str, owner: str) -> bool:
        """Give up lease ``name`` if ``owner`` holds it (its token is kept)."""
        return self._calling(self._release_lease, name, owner)

    @abstractmethod
    def _release_lease(self, name: str, owner: str) -> bool: ...

    def leases(self, prefix: str, now: float) -> list[Lease]:
        """Unexpired leases whose name starts with ``prefix``."""
        return self._calling(self._leases, prefix, now)

    @abstractmethod
    def _leases(self, prefix: str, now: float) -> list[Lease]: ...

    def forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        """Delete up to ``limit`` leases whose name starts with ``prefix`` and that ended
        (expired, or were released) before ``before``; returns how many.

        Only for names that are never taken again, such as a worker's: a forgotten lease
        loses its token, so taking the same name later would start the token over. Each
        lease is checked and deleted atomically, so one renewed meanwhile stays.
        """
        limit = min(rules.checked_count("limit", limit), rules.MAX_BATCH)
        return self._calling(self._forget_leases, prefix, before, limit)

    @abstractmethod
    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int: ...

    # -- schedules ----------------------------------------------------------------

    def save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None = None,
        *,
        expected_revision: int | None = None,
    ) -> bool:
        """Insert or replace a schedule; ``True`` when it was written.

        Atomically: with a ``fence``, raise ``LeaseLost`` (writing nothing) unless it is
        the current, unexpired holder of its lease at ``now``. With ``expected_revision``,
        write only if the revision a reader would see now is that one, a schedule that
        does not exist reading as 0 (``rules.expected_revision_holds``): 0 means "not
        stored" (or stored by a version without revisions), so a read-compare-write loop
        never undoes a change made since its read; otherwise write nothing and return
        ``False``. Every write sets the stored ``revision`` to one more than the name's
        last one (1 for a name never stored); ``schedule.revision`` is ignored, and the
        caller's object is not changed.
        """
        rules.check_schedule(schedule)
        rules.check_fence_given(fence, required=False)
        if expected_revision is not None:
            rules.checked_count("expected_revision", expected_revision, minimum=0)
        return self._calling(self._save_schedule, schedule, now, fence, expected_revision)

    @abstractmethod
    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool: ...

    def fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        *,
        state: dict[str, Any] | None = None,
    ) -> bool:
        """The leader fires ticks of schedule ``read`` (as it read it): their jobs are
        stored and the schedule moves on to ``next_fire``, in ONE atomic step.

        With ``state``, the schedule's stored ``state`` is replaced by it in that same
        step (what the leader consumed: a run requested by hand, a backfill's ticks, the
        tick log); without, the stored state is kept as it is.

        In that step: raise ``LeaseLost``, writing nothing, unless ``fence`` is the
        current, unexpired holder of its lease at ``now``. If the stored schedule
        ``read.name`` is gone, or its revision is no longer ``read.revision``
        (``rules.unchanged_since``: a save, a removal, a redeploy's new expression or
        template since the read), write nothing and return ``False``: a change the leader
        did not make wins, and the leader reads the schedules again. Otherwise store
        ``jobs`` exactly as ``put`` does (by id: an id whose record exists and has not
        expired is left untouched; ``scheduled`` or ``queued`` by eta against ``now``),
        set the schedule's ``next_fire`` and ``updated_at = now``, raise its revision to
        ``read.revision + 1`` and return ``True``.

        Because a tick's jobs and the advance past it are one write, the schedule's
        ``next_fire`` is the ledger of its ticks: a tick it was advanced past is never
        fired by that schedule again, whatever became of its job record (finished and
        expired after ``result_ttl``, deleted by a sweep), and a tick it was not advanced
        past was not fired. A leader that dies before the step fired nothing, and its
        successor fires the tick; one that dies after it, fired the tick and moved on.

        ``jobs`` may be empty (an advance past ticks the misfire policy skips); at most
        ``rules.MAX_BATCH`` of them per call, so the caller fires a long catch-up in
        several steps, each moving ``next_fire`` to the first tick it left out.
        (MongoDB without transactions, a standalone server, cannot make this one step:
        see ``MongoBackend``.)
        """
        rules.check_schedule(read)
        rules.check_fire(jobs, next_fire)
        rules.check_fence_given(fence, required=True)
        if state is None:
            return self._calling(self._fire_schedule, read, jobs, next_fire, now, fence)
        rules.check_schedule_json(read.name, "state", state)
        return self._calling(self._fire_schedule, read, jobs, next_fire, now, fence, state)

    @abstractmethod
    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool: ...

    def schedules(self) -> list[ScheduleRecord]:
        """All stored schedules of this queue, by name."""
        return self._calling(
            self._schedules,
        )

    @abstractmethod
    def _schedules(self) -> list[ScheduleRecord]: ...

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; ``False`` if there was none. Its name's revision is kept, so
        the name stored again gets a newer one: a leader that read the old schedule can
        never take the new one for it."""
        return self._calling(self._remove_schedule, name)

    @abstractmethod
    def _remove_schedule(self, name: str) -> bool: ...

    # -- optional fast paths with correct defaults ----------------------------------

    def wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        """Sleep up to ``timeout`` seconds, returning early if there may be work.

        With ``routes`` the caller is a worker waiting for jobs on those routes; without,
        a scheduler waiting for anything that could move its next due time earlier (a
        new eta, a freed lease). Waking early spuriously is allowed; waking late is not:
        the sleep must not overrun ``timeout`` by more than a millisecond or two, since the
        scheduler sleeps exactly until the next eta. The default polls; backends that can
        observe changes (SQLite's data_version, a condition variable, a blocking pop)
        wake sooner.
        """
        return self._calling(self._wait, timeout, routes)

    def _wait(self, timeout: float, routes: Sequence[str] | None) -> None:
        self._began_waiting()
        time.sleep(max(0.0, min(timeout, 0.005)))

    def _began_waiting(self) -> None:
        if self.wait_began is not None:
            self.wait_began()

    def close(self) -> None:  # noqa: B027 - a default for backends with nothing to release
        """Release connections. The instance is not used afterwards."""
