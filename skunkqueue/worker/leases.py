"""Whether a worker's leases are known good, so that it may start a job or claim more.

A worker holds each claimed job under a lease that its heartbeat renews. When renewals
stop going through (a frozen store, a half-open connection) the leases lapse, the leader
hands the jobs back, and another worker runs them: a job started then may run twice.
So the worker starts a job only while that job's lease is known good, and claims only
while its heartbeat's calls go through: known good means renewed (or taken by the claim
itself) less than ``FRESH_SHARE`` of a lease ago, which leaves a third of the lease for
the job to be handed back before anyone else may take it.

The heartbeat's own calls give up after ``CALL_SHARE`` of a lease (``call_timeout``), so
a renewal stuck on a frozen store ends in time for another attempt before the lease
lapses.

Times here are ``time.monotonic()``: they measure how long ago, not when, and a lease's
end is the store's business. The heartbeat thread reports beats, the main thread claims
and asks; both take this object's lock only briefly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("skunkqueue.worker")

#: A heartbeat call gives up after this share of the lease (and sooner where the store's
#: own timeout is shorter): a renewal stuck on a frozen store then fails with a retry still
#: possible before the lease lapses (beats come every third of a lease at most).
CALL_SHARE = 1 / 3
#: A worker starts jobs and claims only while its leases were renewed less than this share
#: of a lease ago.
FRESH_SHARE = 2 / 3


def heartbeat_call_timeout(lease: float) -> float:
    """The ``call_timeout`` of a worker's heartbeat connection, for a lease of ``lease`` s."""
    return lease * CALL_SHARE


class Beat(NamedTuple):
    """One heartbeat, as it began: when, and how many batches the worker had claimed."""

    began: float
    batches: int


class LeaseWatch:
    """When a worker's leases were last known renewed, and what that allows.

    The main thread reports each claimed batch (``claimed``) and asks before it claims
    (``may_claim``) and before each job it starts (``may_start``); the heartbeat thread
    reports each beat (``beat_began``, then ``renewed`` once the beat went through).
    ``claimed`` and ``beat_began`` must be called under the worker's own lock, with the
    batch's jobs added to what it holds and with the beat's snapshot of it taken: a beat
    then covers exactly the batches it counts.
    """

    def __init__(
        self, lease: float, worker_id: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lease = lease
        self._fresh_for = lease * FRESH_SHARE
        self._worker_id = worker_id
        self._clock = clock
        self._lock = threading.Lock()
        self._renewal = threading.Condition(self._lock)
        now = clock()
        # A new worker holds nothing, and has nothing to renew yet.
        self._last = Beat(now, 0)  # the last beat that went through
        self._batches = 0  # batches claimed
        self._batch_began = now  # when the claim of the latest batch began
        self._paused = False

    def claimed(self, began: float) -> None:
        """A batch was claimed by a call that began at ``began`` (its leases run from then)."""
        with self._lock:
            self._batches += 1
            self._batch_began = began

    def beat_began(self) -> Beat:
        with self._lock:
            return Beat(self._clock(), self._batches)

    def renewed(self, beat: Beat) -> None:
        """``beat`` went through: every lease it asked about is renewed from its start."""
        with self._renewal:
            if beat.began > self._last.began:
                self._last = beat
            self._renewal.notify_all()

    def may_claim(self) -> bool:
        """Whether the heartbeat's calls go through: a batch claimed now would be renewed."""
        with self._lock:
            since = self._last.began
        return self._allows(since)

    def may_start(self) -> bool:
        """Whether the leases of the batch being run are known good, to start its next job."""
        with self._lock:
            covered = self._last.batches >= self._batches
            since = self._last.began if covered else self._batch_began
        return self._allows(since)

    def wait_for_renewal(self, timeout: float) -> None:
        """Return when a beat goes through, or after ``timeout`` seconds."""
        with self._renewal:
            self._renewal.wait(timeout)

    def _allows(self, since: float) -> bool:
        """Whether leases renewed at ``since`` are still known good; says so in the log
        when that changes (only the main thread asks, so the changes are its own)."""
        age = self._clock() - since
        fresh = age < self._fresh_for
        if not fresh and not self._paused:
            log.warning(
                "worker %s: its leases were last renewed %.1f s ago (lease %g s); it starts "
                "no job and claims none until a renewal goes through",
                self._worker_id,
                age,
                self._lease,
            )
        elif fresh and self._paused:
            log.info("worker %s: leases renewed again; resuming", self._worker_id)
        self._paused = not fresh
        return fresh
