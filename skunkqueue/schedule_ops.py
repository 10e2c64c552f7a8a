"""Operating stored schedules by hand: pause and resume, run now, backfill, and the
listing an operator reads (``ScheduleInfo``).

Every change is a read-compare-write of the schedule's ``state`` on its revision
(``save_schedule(expected_revision=...)``), so it never undoes a leader's advance or
another operator's change, and a leader that read the schedule before the change fails
its own compare-and-set and decides again on what it reads next. The leader consumes
the requests (``scheduler/ticks.py``) in the atomic step that stores their jobs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from . import schedule_state as st
from .cron import ScheduleSpec
from .errors import SkunkQueueError, UnknownSchedule
from .model import ScheduleRecord
from .persistence.base import Backend

T = TypeVar("T")

#: Read-compare-writes before an operator's change gives up: each retry means a write
#: landed in between (a leader steps a schedule once per tick, or per backfill batch).
CHANGE_ATTEMPTS = 50
#: Characters a pause's note may have.
MAX_NOTE = 1000
#: Fire times ``ScheduleInfo.next_fires`` lists.
NEXT_FIRES = 5


@dataclass(frozen=True)
class TickInfo:
    """One entry of a schedule's tick log.

    ``tick``: the nominal instant (for a run asked for by hand, when it was asked for);
    ``kind``: ``cron``, ``trigger`` or ``backfill``; ``outcome``: the job's state now
    (``complete``, ``running``, ...), ``fired`` once its record has expired, or
    ``skipped`` (``reason`` says why; ``count`` ticks in a row, the last at ``until``);
    ``lateness``: seconds from the nominal tick to the job's start, once it started
    (jitter included); ``missed``: earlier ticks the misfire policy coalesced into it.
    """

    tick: datetime
    kind: str
    outcome: str
    reason: str | None = None
    job_ids: tuple[str, ...] = ()
    lateness: float | None = None
    count: int = 1
    until: datetime | None = None
    missed: int = 0


@dataclass(frozen=True)
class ScheduleInfo:
    """A stored schedule as an operator sees it (``queue.schedules()``).

    ``expression``: the cron expression, or ``every N s``; ``next_fires``: the next
    timetable instants, aware, in the schedule's ``timezone`` (listed while paused too:
    they are skipped until resumed); ``last_ticks``: the tick log, oldest first;
    ``pending_triggers``, ``pending_backfill``: requested runs the leader has not fired
    yet; ``problem``: why this host cannot read the schedule, or ``None``.
    """

    name: str
    expression: str
    timezone: str
    paused: bool
    note: str | None
    paused_at: datetime | None
    jitter: float
    misfire: str
    route: str | None
    revision: int
    next_fires: list[datetime]
    last_ticks: list[TickInfo]
    pending_triggers: int = 0
    pending_backfill: list[tuple[datetime, datetime]] | None = None
    problem: str | None = None
    #: When the schedule was first stored (``None`` for one stored before this was kept).
    created: datetime | None = None
    #: What a tick does while an earlier run is unfinished (``scheduler/overlap.py``), and
    #: the most runs of the event at once (its tick jobs' ``concurrency``; ``None``: no limit).
    overlap: str = "allow"
    concurrency: int | None = None
    #: The runs the overlap policy waits on: fired and unfinished when the leader last looked.
    unfinished_runs: list[str] | None = None


def stored_state(existing: ScheduleRecord | None, next_fire: float, now: float) -> dict[str, Any]:
    """The state a registration stores: a new schedule's (every tick before its first
    never ran), or the stored one, carried over (the operator's, not the code's: a
    redeploy never unpauses a schedule or drops its log). A new expression moving the
    timetable on leaves the ticks it passes over, never fired, as a gap."""
    if existing is None:
        return st.initial_state(now, next_fire)
    state = copy.deepcopy(existing.state)
    passed_from = min(existing.next_fire, now)
    if passed_from < next_fire and next_fire != existing.next_fire:
        state["gaps"] = st.bounded(st.add_range(state.get("gaps", []), passed_from, next_fire))
    return state


def pause(backend: Backend, name: str, note: str | None) -> bool:
    if note is not None and not isinstance(note, str):
        raise TypeError(f"a pause's note must be text, not {note!r}")
    if note is not None and len(note) > MAX_NOTE:
        # The note travels in every step the leader writes (FoundationDB takes 100 kB a value).
        raise ValueError(f"a pause's note is at most {MAX_NOTE} characters, not {len(note)}")

    def change(schedule: ScheduleRecord, now: float) -> tuple[dict[str, Any] | None, bool]:
        was = schedule.state.get("paused")
        if was and (note is None or was.get("note") == note):
            return None, False
        return st.paused(schedule.state, was["at"] if was else now, note), not was

    return _change(backend, name, change)


def resume(backend: Backend, name: str) -> bool:
    def change(schedule: ScheduleRecord, now: float) -> tuple[dict[str, Any] | None, bool]:
        if not st.is_paused(schedule.state):
            return None, False
        return st.resumed(schedule.state), True

    return _change(backend, name, change)


def trigger(backend: Backend, name: str) -> str:
    def change(schedule: ScheduleRecord, now: float) -> tuple[dict[str, Any], str]:
        # The id names the revision this write will get: unique for the name, forever.
        event = schedule.template.get("event", name)
        job_id = st.trigger_job_id(backend.queue, event, now, schedule.revision + 1)
        return st.triggered(schedule.state, job_id, now), job_id

    return _change(backend, name, change)


def backfill(backend: Backend, name: str, start: datetime, end: datetime) -> int:
    lo, hi = _instant("start", start), _instant("end", end)
    if lo >= hi:
        raise ValueError(
            f"backfill needs start < end, got {start.isoformat()} .. {end.isoformat()}"
        )
    spec = ScheduleSpec.from_dict(_find(backend, name).spec)
    total = st.count_ticks(spec, [[lo, hi]], st.MAX_BACKFILL_TICKS + 1)
    if total > st.MAX_BACKFILL_TICKS:
        raise ValueError(
            f"{start.isoformat()} .. {end.isoformat()} holds more than "
            f"{st.MAX_BACKFILL_TICKS} ticks of {name} ({spec.describe()}): backfill a "
            "shorter range, one call at a time"
        )

    def change(schedule: ScheduleRecord, now: float) -> tuple[dict[str, Any] | None, int]:
        spec = ScheduleSpec.from_dict(schedule.spec)
        wanted = st.intersect(schedule.state.get("gaps", []), lo, hi)
        for pending_lo, pending_hi in schedule.state.get("backfill", []):
            wanted = st.remove_range(wanted, pending_lo, pending_hi)
        added = st.count_ticks(spec, wanted, st.MAX_BACKFILL_TICKS)
        if not added:
            return None, 0
        return st.backfill_requested(schedule.state, lo, hi), added

    return _change(backend, name, change)


def schedule_infos(backend: Backend) -> list[ScheduleInfo]:
    """Every stored schedule, as ``ScheduleInfo``. Reads each logged tick's job (one
    ``get`` per fired tick, at most ``schedule_state.LOG_SIZE`` a schedule) for its state
    and start: an operator's listing, not a hot path."""
    now = backend.now()
    return [_info(backend, schedule, now) for schedule in backend.schedules()]


def _info(backend: Backend, schedule: ScheduleRecord, now: float) -> ScheduleInfo:
    state = schedule.state
    paused = state.get("paused") or {}
    raw = schedule.spec
    try:
        spec = ScheduleSpec.from_dict(raw)
        zone = ZoneInfo(spec.timezone)
        fires, at = [], schedule.next_fire
        for _ in range(NEXT_FIRES):
            fires.append(datetime.fromtimestamp(at, zone))
            at = spec.next_after(at)
        problem = None
    except Exception as exc:  # noqa: BLE001 - a record this host cannot read is listed as such
        zone, fires, problem = ZoneInfo("UTC"), [], f"{type(exc).__name__}: {exc}"

    def when(t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(t, zone)

    return ScheduleInfo(
        name=schedule.name,
        expression=str(raw.get("cron") or f"every {raw.get('every', 0):g} s"),
        timezone=str(raw.get("timezone", "UTC")),
        paused=bool(paused),
        note=paused.get("note"),
        paused_at=when(paused.get("at")),
        jitter=float(raw.get("jitter", 0.0)),
        misfire=str(raw.get("misfire", "coalesce")),
        route=schedule.template.get("route"),
        revision=schedule.revision,
        next_fires=fires,
        last_ticks=[_tick_info(backend, entry, now, when) for entry in state.get("log", [])],
        pending_triggers=len(state.get("triggers", [])),
        pending_backfill=[(when(lo), when(hi)) for lo, hi in state.get("backfill", [])],
        problem=problem,
        created=when(state.get("since")),
        overlap=str(raw.get("overlap", "allow")),
        concurrency=1
        if raw.get("overlap", "allow") != "allow"
        else schedule.template.get("concurrency"),
        unfinished_runs=list(state.get("live", [])) or None,
    )


def _tick_info(
    backend: Backend,
    entry: dict[str, Any],
    now: float,
    when: Callable[[float | None], datetime | None],
) -> TickInfo:
    outcome, lateness = entry["outcome"], None
    job_ids = tuple(entry.get("jobs", ()))
    if outcome == "fired" and job_ids:
        job = backend.get(job_ids[0], now)
        if job is not None:
            outcome = str(job.state)
            if job.started_at is not None:
                lateness = job.started_at - entry["tick"]
    return TickInfo(
        tick=when(entry["tick"]),  # type: ignore[arg-type]
        kind=entry["kind"],
        outcome=outcome,
        reason=entry.get("reason"),
        job_ids=job_ids,
        lateness=lateness,
        count=entry.get("count", 1),
        until=when(entry.get("until")) if entry.get("count", 1) > 1 else None,
        missed=entry.get("missed", 0),
    )


def _find(backend: Backend, name: str) -> ScheduleRecord:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a schedule's name must be a non-empty string, not {name!r}")
    for schedule in backend.schedules():
        if schedule.name == name:
            return schedule
    known = ", ".join(s.name for s in backend.schedules()) or "none"
    raise UnknownSchedule(
        f"no schedule named {name!r} on queue {backend.queue!r} (stored: {known})"
    )


def _change(
    backend: Backend,
    name: str,
    change: Callable[[ScheduleRecord, float], tuple[dict[str, Any] | None, T]],
) -> T:
    """Apply ``change`` (schedule, now) -> (new state or None for no write, result) to the
    stored schedule ``name`` with a read-compare-write on its revision."""
    for _ in range(CHANGE_ATTEMPTS):
        now = backend.now()
        schedule = _find(backend, name)
        state, result = change(schedule, now)
        if state is None:
            return result
        record = replace(schedule, state=state, updated_at=now)
        if backend.save_schedule(record, now, expected_revision=schedule.revision):
            return result
    raise SkunkQueueError(
        f"schedule {name!r} changed under each of {CHANGE_ATTEMPTS} attempts to change it; "
        "is something rewriting it?"
    )


def _instant(what: str, value: Any) -> float:
    """An aware datetime as epoch seconds. A naive one is refused rather than guessed:
    read in the wrong zone, a backfill would run hours of the wrong ticks."""
    if not isinstance(value, datetime):
        raise TypeError(f"backfill's {what} must be a datetime, not {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"backfill's {what} {value.isoformat()} has no time zone: pass an aware datetime "
            "(e.g. datetime(..., tzinfo=timezone.utc))"
        )
    return value.timestamp()
