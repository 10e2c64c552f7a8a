"""The data every layer shares: job records and their states, outcomes, leases, fences,
schedule records and the reports of backend verbs.

This module imports nothing of SkunkQueue's: it is the bottom of the layering. Records
are plain data; the rules that change them live in ``persistence/rules.py`` and the
user-facing handles in ``handles.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

#: The lease the schedulers campaign for; one holder leads.
SCHEDULER_LEASE = "scheduler"
#: Each live worker holds ``worker:<id>``; its ``info`` names the worker's routes.
WORKER_LEASE_PREFIX = "worker:"


class JobState(StrEnum):
    """Where a job is in its life. Members compare equal to the strings users see."""

    SCHEDULED = "scheduled"  # waiting in the time index for its eta
    QUEUED = "queued"  # on its route queue, ready for a worker
    RUNNING = "running"  # claimed by a worker that holds a lease on it
    RETRYING = "retrying"  # failed, waiting in the time index for its retry eta
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


#: A state by its string: a dict lookup, many times cheaper than calling ``JobState``.
_BY_VALUE: dict[str, JobState] = {state.value: state for state in JobState}


def as_state(value: str) -> JobState:
    """``value`` as a ``JobState``; ``ValueError`` naming the states if it is none."""
    try:
        return _BY_VALUE[value]
    except (KeyError, TypeError):
        raise ValueError(f"unknown job state {value!r}: one of {', '.join(_BY_VALUE)}") from None


#: States waiting in the time index for their eta.
WAITING = frozenset({JobState.SCHEDULED, JobState.RETRYING})
#: States a job can still be cancelled from: it has not started.
CANCELLABLE = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING})
#: States a job can be retried by hand from: it ended without success.
RETRYABLE = frozenset({JobState.ERROR, JobState.CANCELLED})
#: States a worker may report for a job it holds.
OUTCOME_STATES = frozenset({JobState.COMPLETE, JobState.ERROR, JobState.RETRYING, JobState.QUEUED})


@dataclass
class JobRecord:
    """Everything a backend stores about one job.

    Times are epoch seconds (floats). ``payload`` and ``result`` are already encoded by
    ``serializer``; backends store them as opaque text. ``attempts`` counts executions
    that concluded (success, failure or timeout); ``deliveries`` counts claims, so
    ``deliveries - attempts`` for a job that is not running is the number of deliveries
    lost to dead workers.

    ``concurrency``, when set, is the most jobs of this record's ``event`` that may be
    ``running`` at once in the queue when a claim takes this one (``rules.gate_open``);
    ``None``: no limit of its own.
    ``history`` keeps the errors of earlier attempts, oldest first (at most
    ``rules.HISTORY_KEEP``): whenever ``error`` is replaced by a later outcome or cleared
    by a retry by hand, the error it held is appended (``rules.remember_error``).
    """

    id: str
    event: str
    route: str
    payload: str
    serializer: str = "json"
    state: JobState = JobState.QUEUED
    eta: float = 0.0
    created_at: float = 0.0
    seq: int = 0
    attempts: int = 0
    deliveries: int = 0
    max_deliveries: int = 3
    owner: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    result_ttl: float = 86400.0
    timeout: float | None = None
    retry: dict[str, Any] | None = None
    result: str | None = None
    error: dict[str, Any] | None = None
    schedule: str | None = None
    parent: str | None = None
    concurrency: int | None = None
    history: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # Stores hand back plain strings; an unknown one fails here, not in a comparison.
        if type(self.state) is not JobState:
            self.state = as_state(self.state)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**data)


@dataclass
class Outcome:
    """What a worker reports for a job it holds.

    ``state`` is ``complete``, ``error``, ``retrying`` (run again at ``eta``) or
    ``queued`` (handed back unrun or interrupted: the delivery is not counted). Any
    other state is refused here, before a backend sees it. ``started_at``, when the
    worker knows it, is the moment the job's code began, by the store's clock: it
    replaces the claim's time in the record (a batch's later jobs start after their claim).
    """

    job_id: str
    state: JobState
    result: str | None = None
    error: dict[str, Any] | None = None
    eta: float | None = None
    started_at: float | None = None

    def __post_init__(self) -> None:
        state = _BY_VALUE.get(self.state) if isinstance(self.state, str) else None
        if state not in OUTCOME_STATES:
            raise ValueError(
                f"outcome state must be one of {', '.join(sorted(OUTCOME_STATES))}, not {self.state!r}"
            )
        self.state = state


@dataclass(frozen=True)
class Lease:
    """A named, owned, expiring claim (leader election, worker liveness).

    ``token`` grows by one every time the lease changes hands, so it fences writes:
    a writer holding an older token has been deposed.
    """

    name: str
    owner: str
    token: int
    until: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fence:
    """Proof of leadership passed with the leader's writes."""

    name: str
    owner: str
    token: int


@dataclass
class ScheduleRecord:
    """A stored cron or interval schedule; enough to fire it without user code.

    ``spec`` holds ``cron``/``every``/``timezone``/``misfire``; ``template`` holds the job
    fields every tick copies (event, route, payload, serializer, retry, timeout, ...).
    ``next_fire`` is the instant of the next tick not yet fired: every earlier tick was
    fired in the same atomic step that moved ``next_fire`` past it.

    ``revision`` counts the writes of this schedule's name. The backend sets it (one more
    on every write, never reused for the name, even after a removal); what a caller puts
    here is ignored. A record stored by a version without revisions reads as 0. Writes
    that must not undo a change made since a read compare it (``fire_schedule``,
    ``save_schedule(expected_revision=...)``).

    ``state`` is the schedule's operational state (paused or not, requested runs, the
    tick log: ``scheduler/schedule_state.py``), a JSON object every backend stores as
    given and no backend interprets. A record stored by a version without it reads as {}.
    """

    name: str
    spec: dict[str, Any]
    template: dict[str, Any]
    next_fire: float
    updated_at: float = 0.0
    revision: int = 0
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepReport:
    """What one ``sweep`` did, part by part, and when the leader should look again.

    ``promoted``: waiting jobs that came due and were queued; ``recovered``: running jobs
    whose lease lapsed, queued again; ``failed``: lapsed jobs that had lost
    ``max_deliveries`` deliveries and ended in ``error``; ``expired``: finished records
    deleted. ``more`` says a part hit its batch limit; ``next_due`` is the earliest eta or
    lease expiry still pending. ``skipped``: records the sweep came to but could not act
    on, and left as they were (a store that can tell, Redis: an index entry whose record
    is missing, or a malformed record, which it sets aside); 0 where a store has no such
    notion.
    """

    promoted: int = 0
    recovered: int = 0
    failed: int = 0
    expired: int = 0
    next_due: float | None = None
    more: bool = False
    skipped: int = 0


@dataclass
class Stats:
    """Counts of unexpired jobs per (state, route), and the earliest pending eta.

    ``quarantined``: records set aside as malformed, which no verb acts on (Redis keeps
    them in a set of their own; 0 where a store has no such notion).
    """

    counts: dict[tuple[str, str], int]
    next_due: float | None
    quarantined: int = 0
