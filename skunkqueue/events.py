"""Events: the functions a queue can run, and how firing one becomes job records.

An event is typed against ``EventHost`` (a name, a config, a backend), not the queue, so
this module sits below ``queue.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from . import serialization
from .broadcast import broadcast_copies
from .checks import seconds
from .config import QueueConfig
from .cron import ScheduleSpec
from .errors import ConfigurationError
from .handles import BroadcastHandle, JobHandle, JobSource, handle_for
from .model import JobRecord, JobState
from .retry import Retry


class EventHost(JobSource, Protocol):
    """What an event needs of its queue: ``SkunkQueue`` is one."""

    name: str
    config: QueueConfig


When = datetime | timedelta


def event_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``; a script run as ``__main__`` is named by its file, so a worker
    that imports that file under its module name finds the same event."""
    module = fn.__module__
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file:
            module = os.path.splitext(os.path.basename(main_file))[0]
    return f"{module}.{fn.__qualname__}"


def new_job_id() -> str:
    """128 random bits in hex, as uuid4().hex gives, at a fifth of its cost."""
    return os.urandom(16).hex()


def eta_from(when: When | None, now: float) -> float:
    """Epoch seconds for an aware or naive (local) datetime, or a delay from ``now``."""
    if when is None:
        return now
    if isinstance(when, timedelta):
        return now + when.total_seconds()
    if isinstance(when, datetime):
        # datetime.timestamp() reads a naive datetime as local time, an aware one exactly.
        return when.timestamp()
    raise TypeError(f"a time must be a datetime or a timedelta, not {type(when).__name__}")


class Event:
    """A function registered on a queue. Call it to run it here; fire it to queue a job."""

    def __init__(
        self,
        queue: EventHost,
        fn: Callable[..., Any],
        *,
        routes: Sequence[str],
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        result_ttl: float | None = None,
        serializer: str | None = None,
        max_deliveries: int | None = None,
        schedule: ScheduleSpec | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.queue = queue
        self.fn = fn
        self.routes = list(routes)
        self.name = name or event_name(fn)
        self.retry = retry
        self.timeout = timeout
        self.result_ttl = queue.config.result_ttl if result_ttl is None else result_ttl
        self.serializer = serializer or queue.config.serializer
        self.max_deliveries = max_deliveries or queue.config.max_deliveries
        self.schedule = schedule
        #: At most this many jobs of this event run at once, across every worker.
        self.concurrency = concurrency
        self.last: JobHandle | BroadcastHandle | None = None
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Event {self.name} on {self.queue.name} routes={self.routes}>"

    # -- firing -------------------------------------------------------------------

    def fire(self, *args: Any, **kwargs: Any) -> JobHandle | BroadcastHandle:
        """Queue a run now."""
        return self.send(args=args, kwargs=kwargs)

    def fire_at(self, when: When, *args: Any, **kwargs: Any) -> JobHandle | BroadcastHandle:
        """Queue a run at ``when``: an aware datetime, a naive one (local time) or a delay."""
        return self.send(args=args, kwargs=kwargs, eta=when)

    def send(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        eta: When | None = None,
        job_id: str | None = None,
        route: str | None = None,
    ) -> JobHandle | BroadcastHandle:
        """The explicit form of ``fire``: one job, written once, idempotent by ``job_id``."""
        now = self.queue.backend.now()
        # A delay counts from the latest the store's clock can be: it is never cut short.
        counted_from = self.queue.backend.latest() if isinstance(eta, timedelta) else now
        jobs = self.build_jobs(args, kwargs, eta_from(eta, counted_from), now, job_id, route)
        self.queue.backend.put(jobs, now, checked=True)  # built from checked parts
        handle = handle_for(self.queue, job_id or jobs[0].parent or jobs[0].id, jobs)
        self.last = handle
        return handle

    def fire_many(
        self, calls: Iterable[Sequence[Any] | dict[str, Any]]
    ) -> list[JobHandle | BroadcastHandle]:
        """Queue many runs in one put: each item is an args tuple or a kwargs dict. (A store
        writes a large put in atomic units, see ``Backend.put``; to retry one that failed
        part-way without running a job twice, give each job an id with ``send(job_id=)``.)"""
        now = self.queue.backend.now()
        fields = self.job_fields()
        jobs: list[JobRecord] = []
        handles: list[JobHandle | BroadcastHandle] = []
        for call in calls:
            args, kwargs = ((), call) if isinstance(call, dict) else (call, None)
            built = self.build_jobs(args, kwargs, now, now, None, None, fields)
            handles.append(handle_for(self.queue, built[0].parent or built[0].id, built))
            jobs += built
        if jobs:
            self.queue.backend.put(jobs, now, checked=True)  # built from checked parts
        if handles:
            self.last = handles[-1]
        return handles

    def build_jobs(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        eta: float,
        now: float,
        job_id: str | None,
        route: str | None,
        fields: dict[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Encode a call into records, raising before anything is written. ``fields`` is
        ``job_fields()``, computed once by a caller that builds many."""
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise TypeError(
                f"args of {self.name} must be a tuple or list, not {type(args).__name__}"
            )
        if job_id is not None or route is not None:  # what a caller gave, not our own
            for name, given in (("job_id", job_id), ("route", route)):
                if given is not None and (not isinstance(given, str) or not given):
                    raise TypeError(f"{name} must be a non-empty string, not {given!r}")
        route = route or self.routes[0]
        payload = serialization.encode_call(self.serializer, args, kwargs, self.name)
        job = JobRecord(
            id=job_id or new_job_id(),
            event=self.name,
            route=route,
            payload=payload,
            **(fields or self.job_fields()),
            eta=eta,
            created_at=now,
        )
        if self.queue.config.queue_type == "broadcast":
            return broadcast_copies(self.queue.backend, job, now)
        return [job]

    def job_fields(self) -> dict[str, Any]:
        """The fields every job of this event carries (also a cron tick's template)."""
        return {
            "serializer": self.serializer,
            "max_deliveries": self.max_deliveries,
            "result_ttl": self.result_ttl,
            "timeout": self.timeout,
            "retry": self.retry.describe() if self.retry else None,
            # Left out when unset, so the stored templates of existing schedules stay
            # as they were (a changed template is rewritten).
            **({"concurrency": self.concurrency} if self.concurrency is not None else {}),
        }

    # -- the seed's view of the most recent fire from this process ----------------

    @property
    def result(self) -> Any:
        return self.last.result if self.last else None

    @property
    def state(self) -> JobState | None:
        return self.last.state if self.last else None


def validate_event_options(
    routes: Any, timeout: Any, result_ttl: Any, serializer: Any, max_deliveries: Any
) -> list[str]:
    if isinstance(routes, str) or not isinstance(routes, (list, tuple)) or not routes:
        raise ConfigurationError(f"routes must be a non-empty list of route names, not {routes!r}")
    if not all(isinstance(r, str) and r and "@" not in r for r in routes):
        raise ConfigurationError(f"route names must be non-empty strings without '@': {routes!r}")
    for name, value in (("timeout", timeout), ("result_ttl", result_ttl)):
        if value is not None:
            seconds(name, value)
    if serializer is not None and serializer not in serialization.SERIALIZERS:
        raise ConfigurationError(
            f"serializer must be one of {serialization.SERIALIZERS}, not {serializer!r}"
        )
    if max_deliveries is not None and (not isinstance(max_deliveries, int) or max_deliveries < 1):
        raise ConfigurationError(
            f"max_deliveries must be a positive integer, not {max_deliveries!r}"
        )
    return list(routes)


def validate_concurrency(concurrency: Any) -> int | None:
    """``concurrency=``: ``None`` (no limit) or a positive integer; ``True`` is refused,
    since it would quietly mean 1."""
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigurationError(
            f"concurrency must be a positive integer (the most jobs of the event running "
            f"at once), not {concurrency!r}"
        )
    return concurrency
