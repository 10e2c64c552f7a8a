"""Small builders shared by the contract tests (plain functions, no fixtures)."""

from __future__ import annotations

from typing import Any

from skunkqueue.jobs import JobRecord
from skunkqueue.persistence.base import SCHEDULER_LEASE, Backend, Fence

#: The fake clock's origin: a realistic epoch instant, so "now" values look like time.time().
T0 = 1_700_000_000.0


def job(job_id: str, *, route: str = "default", eta: float = T0, **fields: Any) -> JobRecord:
    """A job record as a producer would hand it to ``put`` (state decided by the backend)."""
    fields.setdefault("event", "tests.add")
    fields.setdefault("payload", '{"args": [1, 2]}')
    fields.setdefault("created_at", T0)
    return JobRecord(id=job_id, route=route, eta=eta, **fields)


def lead(backend: Backend, now: float, owner: str = "leader", ttl: float = 60.0) -> Fence:
    """Become the scheduler leader at ``now`` and return the fence for its writes."""
    lease = backend.acquire_lease(SCHEDULER_LEASE, owner, now, ttl)
    assert lease is not None, f"{owner} could not take the scheduler lease at {now}"
    return Fence(lease.name, lease.owner, lease.token)


def ids(records: list[JobRecord]) -> list[str]:
    return [r.id for r in records]
