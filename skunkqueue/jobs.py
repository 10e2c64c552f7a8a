"""The job record, its states, and the handle a producer holds after firing."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import JobFailed

if TYPE_CHECKING:
    from .queue import SkunkQueue


class JobState(str, Enum):
    """Where a job is in its life. The values are the strings users see."""

    SCHEDULED = "scheduled"  # waiting in the time index for its eta
    QUEUED = "queued"  # on its route queue, ready for a worker
    RUNNING = "running"  # claimed by a worker that holds a lease on it
    RETRYING = "retrying"  # failed, waiting in the time index for its retry eta
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.COMPLETE, JobState.ERROR, JobState.CANCELLED})
WAITING = frozenset({JobState.SCHEDULED, JobState.RETRYING})
CANCELLABLE = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING})


@dataclass
class JobRecord:
    """Everything a backend stores about one job.

    Times are epoch seconds (floats). ``payload`` and ``result`` are already encoded by
    ``serializer``; backends store them as opaque text. ``attempts`` counts executions
    that concluded (success, failure or timeout); ``deliveries`` counts claims, so
    ``deliveries - attempts`` for a job that is not running is the number of deliveries
    lost to dead workers.
    """

    id: str
    event: str
    route: str
    payload: str
    serializer: str = "json"
    state: str = JobState.QUEUED.value
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**data)

    @property
    def lost_deliveries(self) -> int:
        running = 1 if self.state == JobState.RUNNING.value else 0
        return self.deliveries - self.attempts - running


@dataclass
class Outcome:
    """What a worker reports for a job it holds.

    ``state`` is ``complete``, ``error``, ``retrying`` (run again at ``eta``) or
    ``queued`` (handed back unrun or interrupted: the delivery is not counted).
    """

    job_id: str
    state: str
    result: str | None = None
    error: dict[str, Any] | None = None
    eta: float | None = None


@dataclass
class JobHandle:
    """A producer's view of one fired job; every property reads the backend afresh."""

    queue: SkunkQueue
    id: str
    _cached: JobRecord | None = field(default=None, repr=False, compare=False)

    def record(self) -> JobRecord | None:
        self._cached = self.queue.backend.get(self.id, time.time())
        return self._cached

    @property
    def state(self) -> str | None:
        rec = self.record()
        return rec.state if rec else None

    @property
    def result(self) -> Any:
        rec = self.record()
        if rec is None or rec.state != JobState.COMPLETE.value or rec.result is None:
            return None
        return self.queue.decode_result(rec)

    @property
    def error(self) -> dict[str, Any] | None:
        rec = self.record()
        return rec.error if rec else None

    @property
    def attempts(self) -> int:
        rec = self.record()
        return rec.attempts if rec else 0

    @property
    def deliveries(self) -> int:
        rec = self.record()
        return rec.deliveries if rec else 0

    def wait(self, timeout: float | None = None, poll: float = 0.005) -> Any:
        """Block until the job finishes; return its result.

        Raises ``JobFailed`` (carrying the stored error) on ``error`` or ``cancelled``,
        and ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            rec = self.record()
            if rec is not None and rec.state == JobState.COMPLETE.value:
                return None if rec.result is None else self.queue.decode_result(rec)
            if rec is not None and rec.state in (JobState.ERROR.value, JobState.CANCELLED.value):
                raise JobFailed(self.id, rec.state, rec.error)
            if rec is None:
                raise JobFailed(
                    self.id, "expired", {"reason": "no such job (expired or never stored)"}
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                state = rec.state if rec else "unknown"
                raise TimeoutError(
                    f"job {self.id} did not finish within {timeout} s (state: {state})"
                )
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 1.5, 0.1)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"


@dataclass
class BroadcastHandle:
    """The handle of a broadcast fire: one copy per worker that was alive on the route."""

    queue: SkunkQueue
    id: str
    copies: list[str]

    @property
    def handles(self) -> list[JobHandle]:
        return [JobHandle(self.queue, copy_id) for copy_id in self.copies]

    @property
    def state(self) -> str | None:
        states = {h.state for h in self.handles}
        for state in ("error", "cancelled", "running", "queued", "retrying", "scheduled"):
            if state in states:
                return state
        return "complete" if states == {"complete"} else None

    @property
    def result(self) -> list[Any]:
        return [h.result for h in self.handles]

    @property
    def attempts(self) -> int:
        return sum(h.attempts for h in self.handles)

    def wait(self, timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for handle in self.handles:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(handle.wait(remaining))
        return results
