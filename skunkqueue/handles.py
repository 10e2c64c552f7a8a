"""The handles a producer holds after firing: one job, or a broadcast's copies.

Handles read the store afresh on every property. They need only a ``JobSource`` (a
backend and a way to decode results), not the queue, so this module sits below
``queue.py`` and imports nothing above the backend contract.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import JobFailed
from .jobinfo import JobInfo
from .model import JobRecord, JobState
from .persistence.base import Backend


class JobSource(Protocol):
    """What a handle reads through: ``SkunkQueue`` is one."""

    @property
    def backend(self) -> Backend: ...

    def decode_result(self, record: JobRecord) -> Any: ...

    def accepts_pickle(self, event_name: str) -> bool: ...


@dataclass
class JobHandle:
    """A producer's view of one fired job; every property reads the backend afresh."""

    queue: JobSource
    id: str
    _cached: JobRecord | None = field(default=None, repr=False, compare=False)

    def record(self) -> JobRecord | None:
        self._cached = self.queue.backend.get(self.id, self.queue.backend.now())
        return self._cached

    @property
    def state(self) -> JobState | None:
        rec = self.record()
        return rec.state if rec else None

    @property
    def result(self) -> Any:
        rec = self.record()
        if rec is None or rec.state != JobState.COMPLETE or rec.result is None:
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

    def info(self) -> JobInfo | None:
        """Everything stored about the job, decoded (``JobInfo``); ``None`` if the record
        is gone (expired or never stored), as ``state`` is."""
        rec = self.record()
        if rec is None:
            return None
        return JobInfo.of(rec, accepts_pickle=self.queue.accepts_pickle(rec.event))

    def wait(self, timeout: float | None = None, poll: float = 0.005) -> Any:
        """Block until the job finishes; return its result.

        Raises ``JobFailed`` (carrying the stored error) on ``error`` or ``cancelled``, or
        when the record is gone (expired or never stored), and ``TimeoutError`` when
        ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            rec = self.record()
            if rec is None:
                raise JobFailed(
                    self.id, "expired", {"reason": "no such job (expired or never stored)"}
                )
            if rec.state == JobState.COMPLETE:
                return None if rec.result is None else self.queue.decode_result(rec)
            if rec.state in (JobState.ERROR, JobState.CANCELLED):
                raise JobFailed(self.id, rec.state, rec.error)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"job {self.id} did not finish within {timeout} s (state: {rec.state})"
                )
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 1.5, 0.1)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"


#: A broadcast's state is its most pressing copy's, in this order.
_BROADCAST_PRECEDENCE = (
    JobState.ERROR,
    JobState.CANCELLED,
    JobState.RUNNING,
    JobState.QUEUED,
    JobState.RETRYING,
    JobState.SCHEDULED,
)


@dataclass
class BroadcastHandle:
    """The handle of a broadcast fire: one copy per worker that was alive on the route."""

    queue: JobSource
    id: str
    copies: list[str]

    @property
    def handles(self) -> list[JobHandle]:
        return [JobHandle(self.queue, copy_id) for copy_id in self.copies]

    @property
    def state(self) -> JobState | None:
        states = {h.state for h in self.handles}
        for state in _BROADCAST_PRECEDENCE:
            if state in states:
                return state
        return JobState.COMPLETE if states == {JobState.COMPLETE} else None

    @property
    def result(self) -> list[Any]:
        return [h.result for h in self.handles]

    @property
    def attempts(self) -> int:
        return sum(h.attempts for h in self.handles)

    def info(self) -> list[JobInfo | None]:
        """``JobHandle.info()`` of each copy, in the order of ``copies``."""
        return [h.info() for h in self.handles]

    def wait(self, timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for handle in self.handles:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(handle.wait(remaining))
        return results


def handle_for(
    source: JobSource, job_id: str, jobs: Sequence[JobRecord] = ()
) -> JobHandle | BroadcastHandle:
    """The handle for what one fire stored: a broadcast's copies carry their parent's id."""
    if jobs and jobs[0].parent is not None:
        return BroadcastHandle(source, job_id, [j.id for j in jobs])
    return JobHandle(source, job_id)
