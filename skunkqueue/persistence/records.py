"""Record-level rules shared by backends that update whole job records in their own
atomic step (memory, and any store that reads a record, changes it and writes it back
under a transaction). Backends that update with queries (SQLite) follow the same rules.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ..model import JobRecord, JobState, Lease, Outcome


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
    if outcome.state == JobState.QUEUED:
        r.state = JobState.QUEUED
        r.deliveries -= 1
        return
    r.attempts += 1
    r.error = outcome.error
    if outcome.state == JobState.RETRYING:
        r.state = JobState.RETRYING
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
        r.state = JobState.ERROR
        r.error = lost_deliveries_error(lost, r.max_deliveries)
        r.finished_at = now
        r.expires_at = now + r.result_ttl
    else:
        r.state = JobState.QUEUED


def release_held(r: JobRecord, started: Collection[str], now: float) -> None:
    """``release``'s effect on a running record its dead owner held: a started job lost
    its delivery (as when its lease lapses), any other goes back unrun (as a ``queued``
    outcome does)."""
    if r.id in started:
        recover(r, now)
    else:
        apply_outcome(r, Outcome(r.id, JobState.QUEUED), now)


def payload_size(payload: str) -> int:
    """What a payload counts against ``claim``'s ``max_bytes``: its UTF-8 length, as every
    backend stores it (Redis measures the same with HSTRLEN)."""
    if payload.isascii():  # what the serializers write; O(1) in CPython
        return len(payload)
    return len(payload.encode("utf-8", "surrogatepass"))


def bytes_cut(sizes: Iterable[int], max_bytes: int | None, taken: int = 0, used: int = 0) -> int:
    """How many of the next jobs in leaving order (given by payload size) a claim takes
    under ``max_bytes``, having taken ``taken`` jobs of ``used`` bytes so far: it stops
    before the first job that would go over, except that a claim's first job is always
    taken. Stopping there, rather than skipping to a smaller job, keeps (eta, seq) order."""
    count = 0
    for size in sizes:
        if max_bytes is not None and (taken or count) and used + size > max_bytes:
            break
        used += size
        count += 1
    return count


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
