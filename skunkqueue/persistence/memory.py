"""In-memory backend (``memory://NAME``): the contract in plain Python, for tests and one process.

Every ``MemoryBackend`` opened with the same URL and queue name in one process shares one
store, so producers, worker threads and a scheduler thread see the same jobs. Nothing
survives the process. One lock makes every verb atomic.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..model import WAITING, JobRecord, JobState, Outcome
from .base import Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport
from .rules import (
    MAX_BATCH,
    apply_outcome,
    bytes_cut,
    cancel,
    check_fence,
    expected_revision_holds,
    fired_state,
    gate_open,
    lapsed,
    payload_size,
    recover,
    release_held,
    retry,
    state_on_put,
    take,
    taken_lease,
    unchanged_since,
)

default_cfg: dict[str, Any] = {"backend": "memory", "conn_url": "", "dbname": None}


class _Store:
    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.jobs: dict[str, JobRecord] = {}
        self.leases: dict[str, Lease] = {}
        self.schedules: dict[str, ScheduleRecord] = {}
        #: Every name's last revision, kept when its schedule is removed.
        self.revisions: dict[str, int] = {}
        self.seq = itertools.count(1)
        self.version = 0
        #: Ids of queued jobs a claim held back by their event's concurrency limit.
        self.parked: set[str] = set()


# The one piece of module state: the stores themselves, since sharing them between the
# objects of one process is the whole point of this backend.
_stores: dict[tuple[str, str], _Store] = {}
_stores_lock = threading.Lock()


class MemoryBackend(Backend):
    store_name = "memory"
    put_unit = "the whole call"
    shared_across_processes = False
    wake_mode = "in-process condition variable"

    def __init__(self, url: str, queue: str, *, call_timeout: float | None = None) -> None:
        # call_timeout bounds nothing here: a call waits only for this process's own lock.
        super().__init__(url, queue, call_timeout=call_timeout)
        name = urlsplit(url).netloc or "default"
        with _stores_lock:
            self._store = _stores.setdefault((name, queue), _Store())
        self._seen_version = -1

    # The store's lock doubles as the change condition.
    def _locked(self) -> threading.Condition:
        return self._store.changed

    def _touch(self) -> None:
        self._store.version += 1
        self._store.changed.notify_all()

    @staticmethod
    def _alive(record: JobRecord, now: float) -> bool:
        return record.expires_at is None or record.expires_at > now

    # -- jobs ---------------------------------------------------------------------

    def _put(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """The whole call is one unit: every record is copied, then all are stored under
        the store's lock."""
        with self._locked():
            answers = self._store_jobs(jobs, now)
            self._touch()
        return answers

    def _store_jobs(self, jobs: Sequence[JobRecord], now: float) -> list[bool]:
        """``put``'s writes, for a caller holding the lock."""
        answers = []
        jobs_by_id = self._store.jobs
        # Copy all first: a job that cannot be copied fails the call before any is stored.
        for stored in [copy.deepcopy(job) for job in jobs]:
            existing = jobs_by_id.get(stored.id)
            if existing is not None and self._alive(existing, now):
                answers.append(False)
                continue
            stored.state = state_on_put(stored, now)
            stored.seq = next(self._store.seq)
            jobs_by_id[stored.id] = stored
            answers.append(True)
        return answers

    def _get(self, job_id: str, now: float) -> JobRecord | None:
        with self._locked():
            record = self._store.jobs.get(job_id)
            if record is None or not self._alive(record, now):
                return None
            return copy.deepcopy(record)

    def _list_jobs(
        self, now: float, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        with self._locked():
            found = [
                r
                for r in self._store.jobs.values()
                if self._alive(r, now)
                and (state is None or r.state == state)
                and (route is None or r.route == route)
            ]
            found.sort(key=lambda r: (r.eta, r.seq))
            return copy.deepcopy(found[:limit])

    def _stats(self, now: float) -> Stats:
        counts: dict[tuple[str, str], int] = {}
        next_due = None
        with self._locked():
            for r in self._store.jobs.values():
                if not self._alive(r, now):
                    continue
                counts[(r.state, r.route)] = counts.get((r.state, r.route), 0) + 1
                if r.state in WAITING and (next_due is None or r.eta < next_due):
                    next_due = r.eta
        return Stats(counts=counts, next_due=next_due)

    def _claim(
        self,
        routes: Sequence[str],
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        wanted = set(routes)
        parked = self._store.parked
        with self._locked():
            ready = sorted(
                (
                    r
                    for r in self._store.jobs.values()
                    if r.state == JobState.QUEUED and r.route in wanted and r.id not in parked
                ),
                key=lambda r: (r.eta, r.seq),
            )
            ready = self._through_gates(ready, limit)
            if max_bytes is not None:
                ready = ready[: bytes_cut((payload_size(r.payload) for r in ready), max_bytes)]
            for r in ready:
                take(r, owner, now, lease)
            if ready:
                self._touch()
            return copy.deepcopy(ready)

    def _through_gates(self, ready: list[JobRecord], limit: int) -> list[JobRecord]:
        """The first ``limit`` of ``ready`` (in leaving order) that their events' limits
        let through; the ones refused on the way are held back (``Backend.claim``)."""
        if all(r.concurrency is None for r in ready[:limit]):
            return ready[:limit]
        running: dict[str, int] = {}
        for r in self._store.jobs.values():
            if r.state == JobState.RUNNING:
                running[r.event] = running.get(r.event, 0) + 1
        chosen: list[JobRecord] = []
        held = 0
        for r in ready:
            if len(chosen) >= limit or held >= MAX_BATCH:
                break
            if gate_open(r, running.get(r.event, 0)):
                chosen.append(r)
                running[r.event] = running.get(r.event, 0) + 1
            else:
                self._store.parked.add(r.id)
                held += 1
        return chosen

    def _left_running(self, events: list[str]) -> None:
        """One held-back job of each event named (once per job of it that left
        ``running``, or per gated queued job cancelled) goes back to its queue."""
        parked = self._store.parked
        for event in events:
            if not parked:
                return
            waiting = [
                r
                for r in (self._store.jobs.get(i) for i in parked)
                if r is not None and r.event == event
            ]
            if waiting:
                parked.discard(min(waiting, key=lambda r: (r.eta, r.seq)).id)

    def _renew(
        self, owner: str, now: float, lease: float, job_ids: Sequence[str] | None = None
    ) -> set[str]:
        held = set()
        with self._locked():
            candidates = (
                self._store.jobs.values()
                if job_ids is None
                else filter(None, (self._store.jobs.get(i) for i in job_ids))
            )
            for r in candidates:
                if r.state == JobState.RUNNING and r.owner == owner:
                    r.lease_until = now + lease
                    held.add(r.id)
            if held:
                self._touch()
        return held

    def _finish(self, outcomes: Sequence[Outcome], owner: str, now: float) -> list[bool]:
        answers = []
        with self._locked():
            for outcome in outcomes:
                r = self._store.jobs.get(outcome.job_id)
                if r is None or r.state != JobState.RUNNING or r.owner != owner:
                    answers.append(False)
                    continue
                apply_outcome(r, outcome, now)
                answers.append(True)
                self._left_running([r.event])
            self._touch()
        return answers

    def _release(self, owner: str, now: float, started: Sequence[str] = ()) -> dict[str, str]:
        """Walks every job of the store: memory keeps no index by owner (renew does the
        same); a store of this backend lives in one process and is small."""
        begun = set(started)
        released: dict[str, str] = {}
        with self._locked():
            for r in self._store.jobs.values():
                if r.state == JobState.RUNNING and r.owner == owner:
                    release_held(r, begun, now)
                    released[r.id] = r.state
                    self._left_running([r.event])
            if released:
                self._touch()
        return released

    def _cancel(
        self, job_ids: Sequence[str], now: float, reason: str, running: bool = False
    ) -> list[bool]:
        answers = []
        with self._locked():
            for job_id in job_ids:
                r = self._store.jobs.get(job_id)
                was = r.state if r is not None else None
                gated = was == JobState.QUEUED and r is not None and r.concurrency is not None
                answers.append(r is not None and cancel(r, now, reason, running))
                if answers[-1] and gated:
                    assert r is not None
                    self._store.parked.discard(r.id)
                    self._left_running([r.event])
                elif answers[-1] and was == JobState.RUNNING:
                    assert r is not None
                    self._left_running([r.event])  # a slot of its event is free
            self._touch()
        return answers

    def _retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        answers = []
        with self._locked():
            for job_id in job_ids:
                r = self._store.jobs.get(job_id)
                retried = r is not None and retry(r, now)
                if retried:
                    r.seq = next(self._store.seq)
                answers.append(retried)
            if any(answers):
                self._touch()
        return answers

    def _sweep(self, now: float, fence: Fence, limit: int = 1000) -> SweepReport:
        report = SweepReport()
        with self._locked():
            check_fence(self._store.leases.get(fence.name), fence, now)
            jobs = self._store.jobs
            due = sorted(
                (r for r in jobs.values() if r.state in WAITING and r.eta <= now),
                key=lambda r: (r.eta, r.seq),
            )
            for r in due[:limit]:
                r.state = JobState.QUEUED
            report.promoted = min(len(due), limit)
            ended = [r for r in jobs.values() if lapsed(r, now)][:limit]
            for r in ended:
                recover(r, now)
                self._left_running([r.event])
                if r.state == JobState.ERROR:
                    report.failed += 1
                else:
                    report.recovered += 1
            expired = [i for i, r in jobs.items() if not self._alive(r, now)][:limit]
            for job_id in expired:
                del jobs[job_id]
            report.expired = len(expired)
            report.more = len(due) >= limit or len(ended) == limit or len(expired) == limit
            pending = [r.eta for r in jobs.values() if r.state in WAITING]
            pending += [
                r.lease_until
                for r in jobs.values()
                if r.state == JobState.RUNNING and r.lease_until is not None
            ]
            report.next_due = min(pending) if pending else None
            if report.promoted or ended or expired:
                self._touch()
        return report

    # -- leases -------------------------------------------------------------------

    def _acquire_lease(
        self, name: str, owner: str, now: float, ttl: float, info: dict[str, Any] | None = None
    ) -> Lease | None:
        with self._locked():
            current = self._store.leases.get(name)
            lease = taken_lease(current, name, owner, now, ttl, info or {})
            if lease is None:
                return None
            self._store.leases[name] = lease
            self._touch()
            return lease

    def _release_lease(self, name: str, owner: str) -> bool:
        with self._locked():
            current = self._store.leases.get(name)
            if current is None or current.owner != owner:
                return False
            self._store.leases[name] = Lease(name, "", current.token, 0.0, {})
            self._touch()
            return True

    def _leases(self, prefix: str, now: float) -> list[Lease]:
        with self._locked():
            return sorted(
                (
                    lease
                    for name, lease in self._store.leases.items()
                    if name.startswith(prefix) and lease.owner and lease.until >= now
                ),
                key=lambda lease: lease.name,
            )

    def _forget_leases(self, prefix: str, before: float, limit: int = 500) -> int:
        with self._locked():
            ended = [
                name
                for name, lease in self._store.leases.items()
                if name.startswith(prefix) and lease.until < before
            ][:limit]
            for name in ended:
                del self._store.leases[name]
            return len(ended)

    # -- schedules ----------------------------------------------------------------

    def _save_schedule(
        self,
        schedule: ScheduleRecord,
        now: float,
        fence: Fence | None,
        expected_revision: int | None,
    ) -> bool:
        with self._locked():
            if fence is not None:
                check_fence(self._store.leases.get(fence.name), fence, now)
            current = self._store.schedules.get(schedule.name)
            if not expected_revision_holds(_revision(current), expected_revision):
                return False
            stored = copy.deepcopy(schedule)
            self._store_schedule(stored)
            self._touch()
            return True

    def _store_schedule(self, schedule: ScheduleRecord) -> None:
        """Store ``schedule`` (changed in place) under its name's next revision."""
        schedule.revision = self._store.revisions.get(schedule.name, 0) + 1
        self._store.revisions[schedule.name] = schedule.revision
        self._store.schedules[schedule.name] = schedule

    def _fire_schedule(
        self,
        read: ScheduleRecord,
        jobs: Sequence[JobRecord],
        next_fire: float,
        now: float,
        fence: Fence,
        state: dict[str, Any] | None = None,
    ) -> bool:
        with self._locked():
            check_fence(self._store.leases.get(fence.name), fence, now)
            current = self._store.schedules.get(read.name)
            if current is None or not unchanged_since(current.revision, read.revision):
                return False
            self._store_jobs(jobs, now)
            advanced = copy.deepcopy(current)
            advanced.next_fire, advanced.updated_at = next_fire, now
            advanced.state = copy.deepcopy(fired_state(current.state, state))
            self._store_schedule(advanced)
            self._touch()
            return True

    def _schedules(self) -> list[ScheduleRecord]:
        with self._locked():
            return [copy.deepcopy(s) for _, s in sorted(self._store.schedules.items())]

    def _remove_schedule(self, name: str) -> bool:
        with self._locked():
            found = self._store.schedules.pop(name, None) is not None
            self._touch()
            return found

    def _wait(self, timeout: float, routes: Sequence[str] | None = None) -> None:
        with self._locked():
            if self._store.version == self._seen_version and timeout > 0:
                self._began_waiting()
                self._store.changed.wait(timeout)
            self._seen_version = self._store.version


def _revision(schedule: ScheduleRecord | None) -> int | None:
    return None if schedule is None else schedule.revision
