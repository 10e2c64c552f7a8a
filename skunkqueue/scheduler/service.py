"""The scheduler process: campaign for the lead, and while leading promote due jobs,
recover jobs of dead workers, fire cron ticks and sweep orphaned broadcast copies.

It sleeps until the earliest thing it knows is due (an eta, a lease expiry, a cron tick,
its own lease renewal), and the backend's ``wait`` wakes it sooner when data changes,
so a job fired with an earlier eta is still promoted on time.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from ..config import QueueConfig
from ..errors import LeaseLost
from ..persistence import open_backend
from ..persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX, Backend, Fence, ScheduleRecord
from .leader import LeaderElection
from .ticks import fire_due, next_fire_time

log = logging.getLogger("skunkqueue.scheduler")

SCHEDULE_RELOAD = 0.2  # seconds between re-reads of stored schedules (a new one fires on time)
SWEEP_EVERY = 5.0  # seconds between sweeps for broadcast copies of dead workers
# A worker's lease record is deleted this long after it ended: every worker process takes
# a name of its own, so without this the records of all workers ever started would pile
# up, and every listing of live workers would read them all.
FORGET_WORKERS_AFTER = 300.0
# Seconds between loop turns woken by data changes. A busy store changes all the time (every
# claim and finish), and each turn reads the store; timed turns (an eta, a lease end) are
# never held back by this, so only a job fired due within this spacing can wait for it.
MIN_SPACING = 0.02
BACKOFF_MAX = 5.0  # seconds, the longest pause after a backend error
MAX_SLEEP = 0.25  # bounds how long stop() takes to be noticed


class Scheduler:
    """``Scheduler('demo', url=...).run()``: many may run; exactly one leads."""

    def __init__(
        self,
        name: str,
        *,
        imports: Sequence[str] = (),
        leader_ttl: float | None = None,
        **cfg: Any,
    ) -> None:
        self.config = QueueConfig.from_kwargs(name, **cfg).with_options(leader_ttl=leader_ttl)
        for module in imports:
            importlib.import_module(module)
        self.backend: Backend = open_backend(self.config.url, name)
        self.election = LeaderElection(self.backend, self.config.leader_ttl)
        self._stop = threading.Event()
        self._schedules: list[ScheduleRecord] = []
        self._schedules_read = float("-inf")
        #: Schedules this host cannot fire: name -> (fingerprint of the record, reason).
        self.broken: dict[str, tuple[str, str]] = {}
        self._next_campaign = float("-inf")
        self._next_sweep = float("-inf")

    @property
    def leading(self) -> bool:
        return self.election.fence is not None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Run until ``stop()``; resigns the lead on the way out so a standby takes over at once."""
        log.info("scheduler %s started on queue %s", self.election.owner, self.config.name)
        try:
            failures = 0
            while not self._stop.is_set():
                turn_started = self.backend.now()
                try:
                    wake_at = self.step(turn_started)
                    if wake_at > turn_started:
                        self.backend.wait(min(wake_at - self.backend.now(), MAX_SLEEP))
                    failures = 0
                except Exception:
                    failures += 1
                    delay = min(BACKOFF_MAX, 0.05 * 2**failures)
                    log.exception(
                        "scheduler %s: backend error; retrying in %.2f s",
                        self.election.owner,
                        delay,
                    )
                    self._stop.wait(delay)
                    continue
                if wake_at > turn_started:
                    self._stop.wait(max(0.0, min(MIN_SPACING, wake_at - self.backend.now())))
        finally:
            try:
                self.election.resign()
            except Exception:
                log.exception(
                    "scheduler %s could not resign; its lease will lapse", self.election.owner
                )
            self.backend.close()
            log.info("scheduler %s stopped", self.election.owner)

    def step(self, now: float) -> float:
        """One turn of the loop; returns when the next turn is needed."""
        if now >= self._next_campaign or (
            self.election.fence is None and not self.backend.leases(SCHEDULER_LEASE, now)
        ):
            # A standby also campaigns as soon as it sees the lead free (a leader that
            # stopped cleanly resigned), not only on its renewal period.
            self.election.campaign(now)
            self._next_campaign = now + self.election.renew_every
        fence = self.election.fence
        if fence is None:
            return self._next_campaign
        try:
            return min(self._lead(now, fence), self._next_campaign)
        except LeaseLost as exc:
            self.election.deposed(exc)
            self._next_campaign = now
            return now

    def _lead(self, now: float, fence: Fence) -> float:
        report = self.backend.sweep(now, fence)
        if report.promoted or report.recovered or report.failed:
            log.debug(
                "promoted %d, recovered %d, failed %d, expired %d",
                report.promoted,
                report.recovered,
                report.failed,
                report.expired,
            )
        if report.failed:
            log.warning(
                "%d jobs ended in error after losing max_deliveries deliveries", report.failed
            )
        if now - self._schedules_read >= SCHEDULE_RELOAD or (
            self._schedules
            and (next_fire_time(self._schedules, self.broken) or float("inf")) <= now
        ):
            self._read_schedules(now)
        if fire_due(self.backend, self._schedules, now, fence, self.broken).stale:
            # A change this leader did not make (a redeploy, a removal) beat its write:
            # read the schedules now, not a reload period later, so the turns that follow
            # fire them as they are and wake for their real next ticks.
            self._read_schedules(now)
        if now >= self._next_sweep:
            self._sweep_broadcast(now)
            self.backend.forget_leases(WORKER_LEASE_PREFIX, now - FORGET_WORKERS_AFTER)
            self._next_sweep = now + SWEEP_EVERY
        if report.more:
            return now
        candidates = [
            report.next_due,
            next_fire_time(self._schedules, self.broken),
            self._schedules_read + SCHEDULE_RELOAD,
        ]
        return min(t for t in candidates if t is not None)

    def _read_schedules(self, now: float) -> None:
        self._schedules = self.backend.schedules()
        self._schedules_read = now

    def _sweep_broadcast(self, now: float) -> None:
        """Cancel broadcast copies still queued for workers that died before taking them."""
        alive = {
            lease.name[len(WORKER_LEASE_PREFIX) :]
            for lease in self.backend.leases(WORKER_LEASE_PREFIX, now)
        }
        orphaned_routes = [
            route
            for (state, route) in self.backend.stats(now).counts
            if state == "queued" and "@" in route and route.split("@", 1)[1] not in alive
        ]
        for route in orphaned_routes:
            jobs = self.backend.list_jobs(now, state="queued", route=route, limit=1000)
            worker = route.split("@", 1)[1]
            cancelled = self.backend.cancel(
                [j.id for j in jobs],
                now,
                f"worker {worker} stopped before taking its broadcast copy",
            )
            if any(cancelled):
                log.warning(
                    "cancelled %d broadcast copies for dead worker %s", sum(cancelled), worker
                )
