"""``SkunkQueue``: where events are registered and jobs are fired, looked up and cancelled."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, overload

from . import schedule_ops, serialization
from .checks import finite_number
from .config import QueueConfig
from .cron import ScheduleSpec
from .errors import ConfigurationError, JobNotRetryable, SerializationError, SkunkQueueError
from .events import Event, validate_concurrency, validate_event_options
from .handles import BroadcastHandle, JobHandle, handle_for
from .model import RETRYABLE, JobRecord, JobState, as_state
from .persistence import Backend, ScheduleRecord, open_backend, rules
from .registry import lookup_event, register_event
from .retry import Retry
from .schedule_ops import ScheduleInfo, stored_state

__all__ = ["SkunkQueue", "lookup_event"]

#: Reads and compare-and-set writes of a schedule before registering it gives up: each
#: retry means someone else wrote it in between (a leader advances it once per tick).
STORE_SCHEDULE_ATTEMPTS = 5
#: The first page ``retry_all`` lists; each further page is twice the one before.
RETRY_ALL_FIRST_PAGE = 500


class SkunkQueue:
    """A named queue on one backend.

    ``SkunkQueue('demo')`` uses ``$SKUNKQUEUE_URL`` or the SQLite file ``./skunkqueue.db``;
    ``url='sqlite:///jobs.db'``, ``'memory://'`` or the seed's ``**default_cfg`` pick another.
    The backend is opened (and checked) here, so a bad URL fails at construction.
    """

    def __init__(self, name: str, **cfg: Any) -> None:
        self.config = QueueConfig.from_kwargs(name, **cfg)
        self.name = name
        self.events: dict[str, Event] = {}
        self._backend = open_backend(self.config.url, name)
        self._pid = os.getpid()

    @property
    def backend(self) -> Backend:
        """The backend connection, reopened in a forked child (connections do not survive fork)."""
        if self._pid != os.getpid():
            self._backend = open_backend(self.config.url, self.name)
            self._pid = os.getpid()
        return self._backend

    def __repr__(self) -> str:
        return f"<SkunkQueue {self.name} ({self.config.queue_type})>"

    # -- registering events ---------------------------------------------------------

    @overload
    def event(self, fn: Callable[..., Any]) -> Event: ...

    @overload
    def event(
        self,
        fn: None = None,
        *,
        routes: Sequence[str] | None = None,
        name: str | None = None,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: Any = None,
        misfire: str = "coalesce",
        max_catchup: int = 100,
        grace: float | timedelta = 1.0,
        retry: Retry | int | None = None,
        timeout: float | None = None,
        result_ttl: float | None = None,
        serializer: str | None = None,
        max_deliveries: int | None = None,
        concurrency: int | None = None,
        jitter: timedelta | float | None = None,
        overlap: str = "allow",
    ) -> Callable[[Callable[..., Any]], Event]: ...

    def event(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        routes: Sequence[str] | None = None,
        name: str | None = None,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: Any = None,
        misfire: str = "coalesce",
        max_catchup: int = 100,
        grace: float | timedelta = 1.0,
        retry: Retry | int | None = None,
        timeout: float | None = None,
        result_ttl: float | None = None,
        serializer: str | None = None,
        max_deliveries: int | None = None,
        concurrency: int | None = None,
        jitter: timedelta | float | None = None,
        overlap: str = "allow",
    ) -> Event | Callable[[Callable[..., Any]], Event]:
        """Register a function as an event of this queue (``@queue.job`` is the same).

        Everything is validated here, before the function is registered: routes, a cron
        expression or interval and its time zone, the retry policy and the limits. A tick
        more than ``grace`` seconds late counts as missed and ``misfire`` decides what
        happens to it (``'all'`` fires at most the last ``max_catchup`` missed ticks).
        ``concurrency=n`` lets at most n jobs of the event run at once, across every
        worker and machine (decided by the store when a worker claims one). A cron
        or interval event stores its schedule in the backend now, so any scheduler fires
        it without importing this module. ``jitter`` (seconds or a timedelta, shorter than
        the time between two ticks) delays each tick's job by an amount fixed per tick.
        ``overlap`` says what a tick does while an earlier run is unfinished: ``'allow'``
        (run anyway), ``'skip'``, ``'buffer_one'``, ``'buffer_all'`` or ``'cancel_other'``
        (see ``scheduler/overlap.py``).
        """
        routes = validate_event_options(
            ["default"] if routes is None else routes,
            timeout,
            result_ttl,
            serializer,
            max_deliveries,
        )
        concurrency = validate_concurrency(concurrency)
        retry_policy = Retry.coerce(retry)
        schedule = None
        if cron is not None or every is not None:
            schedule = ScheduleSpec.build(
                cron=cron,
                every=every,
                timezone=timezone,
                misfire=misfire,
                max_catchup=max_catchup,
                grace=grace,
                jitter=jitter,
                overlap=overlap,
            )
            if schedule.overlap != "allow" and self.config.queue_type == "broadcast":
                raise ConfigurationError(
                    f"overlap={overlap!r} keeps one run at a time, but a broadcast queue runs "
                    "a copy of each tick on every worker: use overlap='allow' here"
                )
        elif jitter is not None:
            raise ConfigurationError("jitter= spreads a schedule's ticks: give cron= or every=")
        elif overlap != "allow":
            raise ConfigurationError(
                "overlap= decides what a schedule's ticks do while a run is unfinished: "
                "give cron= or every=, or use concurrency= to limit runs of any event"
            )

        def register(function: Callable[..., Any]) -> Event:
            if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
                raise ConfigurationError(
                    f"{getattr(function, '__qualname__', function)!r} is a generator function: "
                    "a job's function must return its result (an `async def` is awaited)"
                )
            event = Event(
                self,
                function,
                routes=routes,
                name=name,
                retry=retry_policy,
                timeout=timeout,
                result_ttl=result_ttl,
                serializer=serializer,
                max_deliveries=max_deliveries,
                schedule=schedule,
                concurrency=concurrency,
            )
            self.events[event.name] = event
            register_event(self.name, event.name, event)
            if schedule is not None:
                self._store_schedule(event)
            return event

        return register(fn) if fn is not None else register

    job = event

    def _store_schedule(self, event: Event) -> None:
        """Store the event's schedule, unless it is stored as it is; an unchanged
        expression keeps the stored ``next_fire`` (the leader's progress).

        A read-compare-write on the schedule's revision: a leader that advanced the
        schedule (or another process that stored it) between the read and the write makes
        the write refuse, and it is read again, so registering never undoes an advance.
        """
        assert event.schedule is not None
        spec = event.schedule.to_dict()
        template = {
            "event": event.name,
            "route": event.routes[0],
            "payload": serialization.encode_call(event.serializer, (), {}, event.name),
            "queue_type": self.config.queue_type,
            **event.job_fields(),
        }
        for _ in range(STORE_SCHEDULE_ATTEMPTS):
            now = self.backend.now()
            existing = next((s for s in self.backend.schedules() if s.name == event.name), None)
            if existing is not None and existing.spec == spec:
                if existing.template == template:
                    return
                next_fire = existing.next_fire
            else:
                next_fire = event.schedule.next_after(now)
            state = stored_state(existing, next_fire, now)
            record = ScheduleRecord(event.name, spec, template, next_fire, now, state=state)
            seen = 0 if existing is None else existing.revision
            if self.backend.save_schedule(record, now, expected_revision=seen):
                return
        raise SkunkQueueError(
            f"the stored schedule of {event.name!r} changed under each of "
            f"{STORE_SCHEDULE_ATTEMPTS} attempts to store it; is something rewriting it?"
        )

    # -- operating schedules (schedule_ops.py) --------------------------------------

    def schedules(self) -> list[ScheduleInfo]:
        """Every stored schedule of this queue, as an operator sees it (``ScheduleInfo``).

        Reads each logged tick's job for its state and start: one ``get`` per fired tick
        in the log (at most 20 a schedule), fine for an operator's look, not a hot path."""
        return schedule_ops.schedule_infos(self.backend)

    def pause_schedule(self, name: str, note: str | None = None) -> bool:
        """Skip schedule ``name``'s ticks from now on (logged, and backfillable) until
        ``resume_schedule``; ``False`` if it was paused already (a ``note`` given then
        replaces its note). Exact under failover: a leader that read the schedule before the pause
        fires nothing of what it read."""
        return schedule_ops.pause(self.backend, name, note)

    def resume_schedule(self, name: str) -> bool:
        """Fire ``name``'s ticks again from its next one (those skipped while paused are
        not fired: ``backfill`` them); ``False`` if it was not paused."""
        return schedule_ops.resume(self.backend, name)

    def trigger_schedule(self, name: str) -> str:
        """Ask for one run of ``name`` now, outside its timetable (also while paused); the
        leader fires it exactly once. Returns the job id the run will have."""
        return schedule_ops.trigger(self.backend, name)

    def backfill(self, name: str, start: datetime, end: datetime) -> int:
        """Run, once each, the ticks of ``name`` in ``[start, end)`` (aware datetimes) that
        never ran: before the schedule was first stored, skipped while paused, missed
        and coalesced by the misfire policy, or skipped by a decision. Returns how many
        ticks this call adds to what is requested; calling it again adds none."""
        return schedule_ops.backfill(self.backend, name, start, end)

    # -- jobs by id -----------------------------------------------------------------

    def handle(self, job_id: str, jobs: Sequence[JobRecord] = ()) -> JobHandle | BroadcastHandle:
        return handle_for(self, job_id, jobs)

    def get(self, job_id: str) -> JobHandle | None:
        """A handle on a stored job, or ``None`` if there is none (or it expired)."""
        if self.backend.get(job_id, self.backend.now()) is None:
            return None
        return JobHandle(self, job_id)

    def jobs(
        self, state: JobState | str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Stored jobs (oldest eta first), optionally only those in ``state`` or on ``route``."""
        return self.backend.list_jobs(self.backend.now(), state=state, route=route, limit=limit)

    def cancel(
        self, job_id: str, reason: str = "cancelled by user", *, running: bool = False
    ) -> bool:
        """Cancel a job that has not started; ``False`` if it is running, finished or unknown.

        With ``running=True`` a running job is cancelled too: its worker stops it within
        about a heartbeat (a third of the lease), raising ``JobCancelled`` in it, and its
        outcome is not stored, so it stays ``cancelled`` with ``reason``.
        """
        return self.backend.cancel([job_id], self.backend.now(), reason, running=running)[0]

    def retry(self, job_id: str) -> JobHandle:
        """Put a job that ended in ``error`` or ``cancelled`` back on its route, to run
        again now: its attempts are kept, its error moves to its history (``info()``).
        Raises ``JobNotRetryable`` naming the job's state, or saying it is unknown or
        expired, when the store refuses (atomically: of two concurrent retries of one
        job, one queues it and the other is refused)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a string, not {job_id!r}")
        backend = self.backend
        if backend.retry([job_id], backend.now())[0]:
            return JobHandle(self, job_id)
        record = backend.get(job_id, backend.now())
        raise JobNotRetryable(job_id, None if record is None else record.state)

    def retry_all(
        self,
        state: JobState | str = "error",
        event: str | None = None,
        route: str | None = None,
        since: datetime | float | None = None,
    ) -> int:
        """Retry every stored job in ``state`` (``'error'`` or ``'cancelled'``), only those
        of ``event`` and on ``route`` where given, and with ``since`` only those that
        finished at or after it (an aware datetime, a naive one in local time, as
        ``fire_at`` reads it, or epoch seconds). Returns how many were queued again; each
        job once, even one that fails again while this runs.

        Listings have no cursor yet: each round lists the state (filtered by route in the
        store) from the start, twice as many records as the round before, until a round
        lists fewer than it asked for. So it reads at most about four times the records in
        ``state`` whatever sits in front, and retries in steps of ``rules.MAX_BATCH``."""
        wanted = _retryable_state(state)
        after = _epoch_since(since)
        if event is not None and not isinstance(event, str):
            raise TypeError(f"event must be an event name, not {event!r}")
        if route is not None and not isinstance(route, str):
            raise TypeError(f"route must be a route name, not {route!r}")
        backend = self.backend
        seen: set[str] = set()
        retried = 0
        limit = RETRY_ALL_FIRST_PAGE
        while True:
            listed = backend.list_jobs(backend.now(), state=wanted, route=route, limit=limit)
            matching = [
                r.id
                for r in listed
                if r.id not in seen
                and (event is None or r.event == event)
                and (after is None or (r.finished_at is not None and r.finished_at >= after))
            ]
            seen.update(matching)
            for start in range(0, len(matching), rules.MAX_BATCH):
                chunk = matching[start : start + rules.MAX_BATCH]
                retried += sum(backend.retry(chunk, backend.now()))
            if len(listed) < limit:
                return retried
            limit *= 2

    def accepts_pickle(self, event_name: str) -> bool:
        """Whether pickled payloads and results of ``event_name`` are decoded here: only
        where the queue or that event opted in to pickle."""
        return self._accepts_pickle(event_name)

    def decode_result(self, record: JobRecord) -> Any:
        if record.serializer == "pickle" and not self._accepts_pickle(record.event):
            raise SerializationError(
                f"job {record.id} has a pickled result, but neither queue {self.name!r} nor its "
                f"event {record.event!r} opted in to pickle here"
            )
        assert record.result is not None
        return serialization.decode(record.serializer, record.result)

    def _accepts_pickle(self, event_name: str) -> bool:
        event = self.events.get(event_name)
        return self.config.serializer == "pickle" or (
            event is not None and event.serializer == "pickle"
        )

    def close(self) -> None:
        self.backend.close()


def _retryable_state(state: JobState | str) -> JobState:
    try:
        wanted = as_state(state)
    except ValueError:
        wanted = None
    if wanted not in RETRYABLE:
        raise ValueError(
            f"retry_all takes state 'error' or 'cancelled' (the states a job can be "
            f"retried from), not {state!r}"
        )
    return wanted


def _epoch_since(since: datetime | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()  # a naive datetime is local time, as fire_at reads it
    if not finite_number(since):
        raise ValueError(f"since must be a datetime or finite epoch seconds, not {since!r}")
    return float(since)
