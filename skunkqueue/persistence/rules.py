"""The rule book: every decision a backend makes about a record, written once.

Backends call these inside their own atomic step (a lock, a transaction, a conditional
update): which state a put takes, whether a fence holds, whether a schedule's revision
is still the one a writer expects, what a claim, an outcome, a recovery, a release, a
cancel and a retry by hand do to a record (and which errors its history keeps), how big
one step may be, and which inputs are refused before any store sees them. The Redis
scripts mirror these rules in Lua; ``tests/contract/test_rule_book.py`` runs the same cases through every backend,
Redis included, and compares them with the functions here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ..checks import finite_number
from ..errors import LeaseLost
from ..model import (
    CANCELLABLE,
    RETRYABLE,
    Fence,
    JobRecord,
    JobState,
    Lease,
    Outcome,
    ScheduleRecord,
    as_state,
)

#: Records one atomic step touches at most, whatever the caller asks: a claim, each part
#: of a sweep (due, lapsed, expired), a release or a forget round. The store serves other
#: clients between steps; a caller that wants more calls again (``more`` says so).
MAX_BATCH = 250
#: Earlier attempts' errors a record keeps in ``history``; the oldest go first. (Mirrored
#: in redis_scripts/_common.lua; tests/contract/test_retry.py goes past it on every store.)
HISTORY_KEEP = 20

# -- inputs, refused before a store sees them --------------------------------------


_TEXT = ("id", "event", "route", "serializer")  # non-empty strings
_OPTIONAL_TEXT = ("owner", "result", "schedule", "parent")
_TIMES = ("eta", "created_at", "result_ttl")  # finite numbers
_OPTIONAL_TIMES = ("lease_until", "started_at", "finished_at", "expires_at", "timeout")
_COUNTS = ("seq", "attempts", "deliveries", "max_deliveries")  # integers
_OPTIONAL_DICTS = ("retry", "error")
_OPTIONAL_LISTS = ("history",)


def check_jobs(jobs: Sequence[JobRecord]) -> None:
    """Every field of every record of a put has a type its stores can keep, so a store
    never half-writes a call that it would refuse part of."""
    for job in jobs:
        _check_job(job)


def _check_job(job: JobRecord) -> None:
    if not isinstance(job, JobRecord):
        raise TypeError(f"put takes JobRecords, not {type(job).__name__}")
    for name in (*_TEXT, "payload", *_OPTIONAL_TEXT):
        value = getattr(job, name)
        if value is None and name in _OPTIONAL_TEXT:
            continue
        if not isinstance(value, str) or (name in _TEXT and not value):
            kind = "a non-empty string" if name in _TEXT else "a string"
            raise TypeError(f"job field {name} must be {kind}, not {value!r}")
    for name in (*_TIMES, *_OPTIONAL_TIMES):
        value = getattr(job, name)
        if value is None and name in _OPTIONAL_TIMES:
            continue
        if not finite_number(value):
            raise ValueError(f"job field {name} must be a finite number, not {value!r}")
    for name in _COUNTS:
        value = getattr(job, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"job field {name} must be an integer, not {value!r}")
    for name in _OPTIONAL_DICTS:
        value = getattr(job, name)
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"job field {name} must be a dict or None, not {value!r}")
    for name in _OPTIONAL_LISTS:
        value = getattr(job, name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(entry, dict) for entry in value)
        ):
            raise TypeError(f"job field {name} must be a list of dicts or None, not {value!r}")
    check_concurrency(job.concurrency, f"job {job.id}: concurrency")


def check_concurrency(value: Any, what: str = "concurrency") -> None:
    """A concurrency limit is ``None`` or a positive integer (``True`` is not one)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a positive integer or None, not {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be a positive integer or None, not {value!r}")


def check_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Outcomes carry encoded text and a finite retry time (their states are checked when
    an ``Outcome`` is made)."""
    for o in outcomes:
        if not isinstance(o, Outcome):
            raise TypeError(f"finish takes Outcomes, not {type(o).__name__}")
        if not isinstance(o.job_id, str):
            raise TypeError(f"an outcome's job_id must be a string, not {o.job_id!r}")
        if o.result is not None and not isinstance(o.result, str):
            raise TypeError(f"a result must be encoded text, not {type(o.result).__name__}")
        if o.error is not None and not isinstance(o.error, dict):
            raise TypeError(f"an error must be a dict, not {type(o.error).__name__}")
        if o.eta is not None and not finite_number(o.eta):
            raise ValueError(f"an outcome's eta must be a finite number, not {o.eta!r}")
        if o.started_at is not None and not finite_number(o.started_at):
            raise ValueError(
                f"an outcome's started_at must be a finite number, not {o.started_at!r}"
            )


def check_schedule(schedule: ScheduleRecord) -> None:
    """A schedule has a name, JSON objects for spec and template (what every store keeps,
    so none refuses what another takes) and finite times."""
    if not isinstance(schedule, ScheduleRecord):
        raise TypeError(f"schedules are ScheduleRecords, not {type(schedule).__name__}")
    if not isinstance(schedule.name, str) or not schedule.name:
        raise TypeError(f"a schedule's name must be a non-empty string, not {schedule.name!r}")
    for name in ("spec", "template", "state"):
        check_schedule_json(schedule.name, name, getattr(schedule, name))
    for name in ("next_fire", "updated_at"):
        value = getattr(schedule, name)
        if not finite_number(value):
            raise ValueError(
                f"schedule {schedule.name!r}: {name} must be a finite number, not {value!r}"
            )
    checked_count("revision", schedule.revision, minimum=0)


def check_schedule_json(schedule: str, name: str, value: Any) -> None:
    """A schedule's ``spec``, ``template`` or ``state``: a dict that JSON can hold."""
    if not isinstance(value, dict):
        raise TypeError(f"schedule {schedule!r}: {name} must be a dict, not {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"schedule {schedule!r}: {name} is not JSON: {exc}") from None


def check_fence_given(fence: Fence | None, required: bool) -> None:
    """A fenced verb gets a ``Fence`` (a leader's proof), not something that looks like one."""
    if (fence is not None or required) and not isinstance(fence, Fence):
        raise TypeError(f"fence must be a Fence, not {fence!r}")


def check_fire(jobs: Sequence[JobRecord], next_fire: float) -> None:
    """One ``fire_schedule`` step: checked jobs, at most ``MAX_BATCH`` of them (the caller
    fires more ticks in later steps), and a finite ``next_fire``."""
    check_jobs(jobs)
    if len(jobs) > MAX_BATCH:
        raise ValueError(
            f"fire_schedule stores at most {MAX_BATCH} jobs in one step, not {len(jobs)}: "
            "fire the remaining ticks in a later step"
        )
    if not finite_number(next_fire):
        raise ValueError(f"next_fire must be a finite number, not {next_fire!r}")


def check_ids(job_ids: Sequence[str] | None) -> None:
    """Job ids given to renew or cancel are strings (a store would turn 7 into "7", or not)."""
    if job_ids is not None and (
        isinstance(job_ids, str) or not all(isinstance(i, str) for i in job_ids)
    ):
        raise TypeError(f"job ids must be a list of strings, not {job_ids!r}")


def check_reason(reason: str) -> None:
    """A cancel's reason is text: every store keeps it in the record's error as it is."""
    if not isinstance(reason, str):
        raise TypeError(f"a cancel's reason must be a string, not {reason!r}")


def check_flag(name: str, value: bool) -> None:
    """A yes/no option is a bool: a truthy string such as "no" must not mean yes."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def check_retry_count(job_ids: Sequence[str]) -> None:
    """One ``retry`` call rewrites at most ``MAX_BATCH`` records (one atomic step)."""
    if len(job_ids) > MAX_BATCH:
        raise ValueError(
            f"retry takes at most {MAX_BATCH} job ids in one call, not {len(job_ids)}: "
            "retry the rest in later calls"
        )


def checked_state(state: str | None) -> JobState | None:
    """A state filter as a ``JobState``; an unknown one is an error, not an empty list."""
    return None if state is None else as_state(state)


def checked_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, not {value!r}")
    return value


def check_positive(name: str, seconds: float) -> None:
    """A lease or ttl: a positive, finite number of seconds. (A worker's jobs are given up
    with ``release``, not with a zero lease.)"""
    if not finite_number(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")


def check_routes(routes: Sequence[str]) -> None:
    if isinstance(routes, str) or not all(isinstance(r, str) for r in routes):
        raise ValueError(f"routes must be a list of route names, not {routes!r}")


# -- what a verb does to a record ----------------------------------------------------


def state_on_put(job: JobRecord, now: float) -> JobState:
    """``put``'s rule: ``retrying`` and ``cancelled`` are kept as given; any other job
    waits ``scheduled`` until its eta, or is ``queued`` at once if it is due."""
    if job.state in (JobState.RETRYING, JobState.CANCELLED):
        return JobState(job.state)
    return JobState.SCHEDULED if job.eta > now else JobState.QUEUED


def take(r: JobRecord, owner: str, now: float, lease: float) -> None:
    """``claim``'s effect on a queued record: it runs for ``owner`` until ``now + lease``.
    The start is the claim's time as it is, never moved to the eta: a job that started
    early must show it."""
    r.state = JobState.RUNNING
    r.owner = owner
    r.lease_until = now + lease
    r.started_at = now
    r.deliveries += 1


def gate_open(r: JobRecord, running: int) -> bool:
    """``claim``'s concurrency rule: a queued job whose ``concurrency`` is n is taken only
    while fewer than n jobs of its event are ``running`` in the queue (``running``: every
    running job of the event, whatever its own limit or route, the ones this claim took
    already included). A job without a limit is always taken.

    A job the rule refuses stays ``queued`` and is held back aside (the claim goes on
    with the jobs behind it). Held-back jobs of one event come back in (eta, seq) order,
    one for each job of the event that leaves ``running`` (finish, release, sweep's
    recovery or lost-deliveries failure) or each held-back-able job cancelled while
    queued; the next claim takes it, or holds it back again. So an event's held-back
    jobs leave in order: one whose own limit is lower than a later one's waits at the
    head until the count is below its own limit (jobs of one event normally share one)."""
    return r.concurrency is None or running < r.concurrency


def lapsed(r: JobRecord, now: float) -> bool:
    """A running record whose lease ended before ``now``: ``sweep`` recovers it."""
    return r.state == JobState.RUNNING and r.lease_until is not None and r.lease_until < now


def cancel(r: JobRecord, now: float, reason: str, running: bool = False) -> bool:
    """``cancel``'s rule: a job that has not started ends ``cancelled`` with its reason and
    expires after its ``result_ttl``; any other is left alone (``False``). With
    ``running``, a running job is cancelled too: its owner and lease are cleared, so its
    holder's renewals and outcome no longer reach it. ``attempts`` and ``deliveries``
    stay: the run did not conclude."""
    if not cancellable(r, running):
        return False
    r.owner = None
    r.lease_until = None
    r.state = JobState.CANCELLED
    r.error = {"reason": reason}
    r.finished_at = now
    r.expires_at = now + r.result_ttl
    return True


def cancellable(r: JobRecord, running: bool = False) -> bool:
    """Whether ``cancel`` (with ``running`` as given) acts on ``r``."""
    return r.state in CANCELLABLE or (running and r.state == JobState.RUNNING)


def fence_holds(current: Lease | None, fence: Fence, now: float) -> bool:
    """A leader's write goes through only while its fence is the lease's current holder:
    same owner and token, unexpired at ``now`` (``until`` inclusive, as leases are)."""
    return (
        current is not None
        and current.owner == fence.owner
        and current.token == fence.token
        and current.until >= now
    )


def check_fence(current: Lease | None, fence: Fence, now: float) -> None:
    """Raise ``LeaseLost`` unless ``fence_holds``."""
    if not fence_holds(current, fence, now):
        raise LeaseLost(f"lease {fence.name!r} is no longer held by {fence.owner}")


def unchanged_since(stored: int | None, read: int) -> bool:
    """``fire_schedule``'s rule: the schedule still exists (``stored`` is its revision, or
    ``None`` when there is none) and no write changed it since it was read at ``read``."""
    return stored is not None and stored == read


def fired_state(stored: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """``fire_schedule``'s rule for a schedule's ``state``: the leader's, when it passes
    one (what it consumed and logged, decided on the revision it read), else the stored
    one, kept."""
    return stored if given is None else given


def expected_revision_holds(stored: int | None, expected: int | None) -> bool:
    """``save_schedule``'s rule for ``expected_revision``: with none, always; else the
    revision a reader would see now (``stored``, a schedule that does not exist reading as
    0) must be ``expected``. So 0 means "not stored", or stored by a version without
    revisions, whose records read as 0 too."""
    return expected is None or (0 if stored is None else stored) == expected


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
    if r.error is not None:
        # A running record carries an error only from an attempt that ended retrying; its
        # times are gone (a retrying record keeps no finish, and the claim replaced the start).
        remember_error(r, JobState.RETRYING, None, None)
    r.attempts += 1
    r.error = outcome.error
    if outcome.started_at is not None:
        r.started_at = outcome.started_at
    if outcome.state == JobState.RETRYING:
        r.state = JobState.RETRYING
        r.eta = outcome.eta if outcome.eta is not None else now
        return
    r.state = outcome.state
    r.result = outcome.result
    r.finished_at = now
    r.expires_at = now + r.result_ttl


def remember_error(
    r: JobRecord, ended_in: str, started_at: float | None, finished_at: float | None
) -> None:
    """Before ``r.error`` is replaced or cleared: append it to ``r.history`` as the error
    of attempt ``r.attempts``, which ended in ``ended_in`` (oldest first, the oldest
    dropped past ``HISTORY_KEEP``). A record without an error is left as it is."""
    if r.error is None:
        return
    entry = {
        "attempt": r.attempts,
        "state": str(ended_in),
        "error": r.error,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    r.history = [*(r.history or ()), entry][-HISTORY_KEEP:]


def retry(r: JobRecord, now: float) -> bool:
    """``retry``'s rule (by hand): a record in ``error`` or ``cancelled`` that has not
    expired goes back on its route, due ``now``; anything else is left alone (``False``).

    Its error moves to ``history``; result, finish, expiry, owner and lease are cleared;
    ``attempts`` stays, and ``deliveries`` is set to ``attempts`` so that the
    lost-delivery budget (``max_deliveries``) starts over. The backend gives it a new
    seq, so it joins the back of its route's queue."""
    if r.state not in RETRYABLE or (r.expires_at is not None and r.expires_at <= now):
        return False
    remember_error(r, r.state, r.started_at, r.finished_at)
    r.state = JobState.QUEUED
    r.eta = now
    r.error = None
    r.result = None
    r.finished_at = None
    r.expires_at = None
    r.owner = None
    r.lease_until = None
    r.deliveries = r.attempts
    return True


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
