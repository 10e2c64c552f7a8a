"""Record-level rules shared by backends that update whole job records in their own
atomic step (memory, and any store that reads a record, changes it and writes it back
under a transaction). Backends that update with queries (SQLite) follow the same rules.
"""

from __future__ import annotations

from typing import Any

from ..jobs import JobRecord, JobState, Outcome
from .base import Lease


def lost_deliveries_error(lost: int, max_deliveries: int) -> dict[str, Any]:
    return {
        "type": "WorkerLost",
        "message": f"lost {lost} deliveries (max_deliveries={max_deliveries}): "
        "the workers holding the job stopped renewing its lease",
        "reason": "lost deliveries",
    }


def apply_outcome(r: JobRecord, outcome: Outcome, now: float) -> None:
    """The effect of ``finish`` on a record its owner still holds."""
    r.owner = None
    r.lease_until = None
    if outcome.state == JobState.QUEUED.value:
        r.state = JobState.QUEUED.value
        r.deliveries -= 1
        return
    r.attempts += 1
    r.error = outcome.error
    if outcome.state == JobState.RETRYING.value:
        r.state = JobState.RETRYING.value
        r.eta = outcome.eta if outcome.eta is not None else now
        return
    r.state = outcome.state
    r.result = outcome.result
    r.finished_at = now
    r.expires_at = now + r.result_ttl


def recover(r: JobRecord, now: float) -> None:
    """A running job whose lease lapsed: back on its queue, or ``error`` after too many losses."""
    r.owner = None
    r.lease_until = None
    lost = r.deliveries - r.attempts
    if lost >= r.max_deliveries:
        r.state = JobState.ERROR.value
        r.error = lost_deliveries_error(lost, r.max_deliveries)
        r.finished_at = now
        r.expires_at = now + r.result_ttl
    else:
        r.state = JobState.QUEUED.value


def taken_lease(
    current: Lease | None, name: str, owner: str, now: float, ttl: float, info: dict[str, Any]
) -> Lease | None:
    """``acquire_lease``'s rule: the lease ``owner`` holds after asking at ``now``, or
    ``None`` while another owner holds it unexpired. The token grows when the owner changes
    (or re-takes its own expired lease) and stays on renewal."""
    if current is not None and current.owner and current.owner != owner and current.until >= now:
        return None
    if current is not None and current.owner == owner and current.until >= now:
        token = current.token
    else:
        token = (current.token if current else 0) + 1
    return Lease(name, owner, token, now + ttl, dict(info))
