"""Broadcast: a job fired on a broadcast queue becomes one copy per worker alive on its route."""

from __future__ import annotations

import logging

from .model import WORKER_LEASE_PREFIX, JobRecord, JobState
from .persistence.base import Backend

log = logging.getLogger("skunkqueue.events")


def broadcast_copies(backend: Backend, job: JobRecord, now: float) -> list[JobRecord]:
    """One copy per worker alive on the job's route now, each on that worker's own route.

    A copy is delivered at most once (a worker's private route has no one else to hand it
    to), so a copy whose worker dies ends in ``error`` instead of waiting forever. With no
    live worker the job is stored ``cancelled``, with the reason, rather than dropped.
    """
    workers = [
        lease.name[len(WORKER_LEASE_PREFIX) :]
        for lease in backend.leases(WORKER_LEASE_PREFIX, now)
        if job.route in lease.info.get("routes", ())
    ]
    if not workers:
        log.warning(
            "broadcast of %s on route %r: no live worker, nothing queued", job.event, job.route
        )
        cancelled = JobRecord(**{**job.to_dict(), "state": JobState.CANCELLED})
        cancelled.error = {"reason": f"no live worker on route {job.route!r} at fire time"}
        cancelled.finished_at = now
        cancelled.expires_at = now + job.result_ttl
        return [cancelled]
    copies = []
    for worker in sorted(workers):
        copy = JobRecord(**job.to_dict())
        copy.id = f"{job.id}@{worker}"
        copy.route = f"{job.route}@{worker}"
        copy.parent = job.id
        copy.max_deliveries = 1
        copies.append(copy)
    return copies
