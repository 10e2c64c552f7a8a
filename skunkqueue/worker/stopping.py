"""Stopping the job a worker runs once the worker no longer holds it.

The heartbeat learns from ``renew`` that a job the worker is running is no longer its
own: it was cancelled while running (``cancel(..., running=True)``), or its lease lapsed
and the job went to another worker. Running it on would do its work after an operator
said stop, or twice; and its outcome would be refused anyway. So it is stopped the way a
timeout stops a job: ``JobCancelled`` (a ``JobTimeout``) is raised in the job's own code
by a signal (``STOP_SIGNAL``) the heartbeat sends to the main thread, which also cuts
short a sleep or a blocking call there. A job that catches it and goes on gets
``HARD_TIMEOUT_GRACE`` seconds, then its process exits as for a hard timeout and the
pool starts a fresh one.

No other job is ever interrupted. A request names the claimed record (the object, not
its id) of the run to stop, and the signal handler, which runs in the main thread
between two bytecodes, raises only while that very run is inside the job's own code:
a run that ended before the signal arrived is left alone, and so is the next one, even
a later delivery of the same job. A signal that came too early (the job's code had not
begun) is sent again on the next look, until it is delivered or the grace ends.

A worker that is not its process's main thread gets no signals and cannot be killed:
the job runs to its end, its outcome is dropped, and the jobs of its batch it no longer
holds are not started.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ..errors import JobCancelled
from ..model import JobRecord, JobState
from .execute import JobCall

#: The signal that interrupts a job its worker no longer holds. Job code should not
#: install its own handler for it in a process worker.
STOP_SIGNAL = signal.SIGUSR2


@dataclass
class _Request:
    job: JobRecord
    message: str
    since: float  # time.monotonic() of the request
    delivered: bool = False


class RunStopper:
    """Stops runs for one worker running in its process's main thread.

    ``running`` returns the claimed record of the job the main thread runs (``None``
    between jobs) without taking a lock: the signal handler calls it in the main thread,
    which may be holding the worker's lock at that moment.
    """

    def __init__(self, call: JobCall, running: Callable[[], JobRecord | None]) -> None:
        self._call = call
        self._running = running
        self._request: _Request | None = None
        self._main = threading.main_thread().ident

    def install(self) -> None:
        """Called once, in the main thread, before the heartbeat starts."""
        signal.signal(STOP_SIGNAL, self._interrupt)

    def stop(self, job: JobRecord, message: str) -> None:
        """Ask the main thread to stop ``job``'s run (from the heartbeat thread); asking
        again for the same run changes nothing, so the grace counts from the first ask."""
        request = self._request
        if request is not None and request.job is job:
            return
        self._request = _Request(job, message, time.monotonic())
        self._signal()

    def overdue(self, grace: float) -> JobRecord | None:
        """The heartbeat's look: the job whose run was asked to stop ``grace`` seconds ago
        or more and is still running (its process must go), else ``None``."""
        request = self._request
        if request is None:
            return None
        if self._running() is not request.job:
            self._request = None  # that run ended
            return None
        if time.monotonic() - request.since >= grace:
            return request.job
        if not request.delivered:
            self._signal()
        return None

    def _signal(self) -> None:
        if self._main is not None:
            signal.pthread_kill(self._main, STOP_SIGNAL)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        request = self._request
        if (
            request is None
            or request.delivered
            or not self._call.in_job
            or self._running() is not request.job
        ):
            return
        request.delivered = True
        raise JobCancelled(request.message)


def why_not_held(job_id: str, record: JobRecord | None, worker_id: str) -> str:
    """What the store says became of a job this worker thought it held, for the
    ``JobCancelled`` raised in it and the worker's log."""
    if record is None:
        why = "its record is gone"
    elif record.state == JobState.CANCELLED:
        reason = (record.error or {}).get("reason")
        why = "it was cancelled" + (f": {reason}" if reason else "")
    elif record.state == JobState.RUNNING and record.owner:
        why = f"its lease lapsed and worker {record.owner} runs it now"
    else:
        why = f"its lease lapsed (it is {record.state} now)"
    return f"job {job_id} is no longer held by worker {worker_id}: {why}"
