"""A schedule's operational state (``ScheduleRecord.state``), as plain JSON, and the pure
arithmetic on it: pause, requested runs, the ranges of time whose ticks never ran, and
the tick log.

Operators change it with a read-compare-write on the schedule's revision
(``queue.pause_schedule`` and friends); the leader consumes it in the same atomic step
that stores the jobs it decided (``fire_schedule(..., state=...)``). Nothing here touches
a store. The keys, all optional (a schedule stored before they existed has none):

* ``since``: when the schedule was first stored.
* ``paused``: ``{"at": when, "note": text or None}`` while paused.
* ``triggers``: ``[{"id": job id, "at": when requested}, ...]``, runs requested by hand,
  not fired yet.
* ``backfill``: ``[[start, end], ...]``, requested ranges whose never-run ticks are not
  fired yet.
* ``gaps``: ``[[start, end], ...]``, ranges of time whose ticks never ran (before the
  schedule existed, skipped while paused, coalesced by the misfire policy, skipped by a
  decision); a tick fired by a backfill leaves them.
* ``log``: the last ``LOG_SIZE`` ticks decided (``LogEntry`` fields, as a dict).

Ranges are half-open ``[start, end)`` in epoch seconds, sorted and merged. Ticks are whole
seconds at least a second apart, so ``[t, t + 1)`` holds the tick ``t`` and no other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .cron import ScheduleSpec

Ranges = list[list[float]]

#: Ticks the log keeps. Consecutive skips for one reason share one entry, so a long pause
#: is one entry, not one per tick.
LOG_SIZE = 20
#: Never-run ranges kept. An overlap policy that skips every other tick adds one range per
#: skip; beyond this the oldest are dropped (those ticks can no longer be backfilled: a
#: backfill fires only ticks known never to have run, so forgetting errs on "ran").
MAX_GAPS = 200
#: Ticks one backfill request may cover, so a typo in a range cannot queue a year of
#: per-second ticks.
MAX_BACKFILL_TICKS = 100_000
#: Misfired ticks counted exactly for the log; past this the count says "at least".
MAX_COUNTED = 1000

KINDS = ("cron", "trigger", "backfill")


def instant_text(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def trigger_job_id(queue: str, event: str, at: float, revision: int) -> str:
    """A run requested by hand: its request's instant, and the revision its request wrote
    (unique per schedule name), so two requests in one second are two runs and a
    trigger's id never equals a cron tick's."""
    return f"{queue}:{event}@{instant_text(at)}~trigger{revision}"


def initial_state(now: float, next_fire: float) -> dict[str, Any]:
    """A new schedule's state: every tick before its first one never ran (backfillable)."""
    return {"since": now, "gaps": [[0.0, next_fire]]}


# -- the operator's requests ---------------------------------------------------------


def is_paused(state: dict[str, Any]) -> bool:
    return bool(state.get("paused"))


def paused(state: dict[str, Any], now: float, note: str | None) -> dict[str, Any]:
    return {**state, "paused": {"at": now, "note": note}}


def resumed(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "paused"}


def triggered(state: dict[str, Any], job_id: str, now: float) -> dict[str, Any]:
    return {**state, "triggers": [*state.get("triggers", []), {"id": job_id, "at": now}]}


def backfill_requested(state: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    return {**state, "backfill": add_range(state.get("backfill", []), start, end)}


def has_requests(state: dict[str, Any]) -> bool:
    """Whether the leader has runs to fire now, whatever the timetable says."""
    return bool(state.get("triggers") or state.get("backfill"))


# -- ranges ----------------------------------------------------------------------------


def add_range(ranges: Ranges, start: float, end: float) -> Ranges:
    """``ranges`` with ``[start, end)`` added, merged with what it touches or overlaps."""
    if start >= end:
        return [list(r) for r in ranges]
    merged: Ranges = []
    for lo, hi in sorted([*map(tuple, ranges), (start, end)]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def remove_range(ranges: Ranges, start: float, end: float) -> Ranges:
    """``ranges`` without ``[start, end)``."""
    if start >= end:
        return [list(r) for r in ranges]
    kept: Ranges = []
    for lo, hi in ranges:
        if hi <= start or lo >= end:
            kept.append([lo, hi])
            continue
        if lo < start:
            kept.append([lo, start])
        if hi > end:
            kept.append([end, hi])
    return kept


def intersect(ranges: Ranges, start: float, end: float) -> Ranges:
    return [[max(lo, start), min(hi, end)] for lo, hi in ranges if lo < end and hi > start]


def bounded(ranges: Ranges) -> Ranges:
    """The newest ``MAX_GAPS`` ranges (see ``MAX_GAPS`` for why the oldest go)."""
    return ranges[-MAX_GAPS:]


def ticks_in(spec: ScheduleSpec, ranges: Ranges, limit: int) -> Iterator[float]:
    """The ticks of ``spec`` inside ``ranges``, oldest first, at most ``limit``."""
    count = 0
    for lo, hi in ranges:
        for tick in spec.ticks_between(lo, hi, limit - count):
            yield tick
            count += 1
        if count >= limit:
            return


def count_ticks(spec: ScheduleSpec, ranges: Ranges, limit: int) -> int:
    """How many ticks ``ticks_in`` finds, counting no further than ``limit``."""
    if spec.every is not None:  # arithmetic: a year of per-second ticks costs nothing
        every = int(spec.every)
        found = sum(max(0, math.ceil(hi / every) - math.ceil(lo / every)) for lo, hi in ranges)
        return min(found, limit)
    return sum(1 for _ in ticks_in(spec, ranges, limit))


# -- the tick log ------------------------------------------------------------------------


def logged(log: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``log`` with ``entry`` appended, the oldest dropped past ``LOG_SIZE``.

    A skip of the same kind and reason as the entry before it extends that entry
    (``count``, ``until``) instead of adding one, so a pause of a week on a per-second
    schedule stays one entry."""
    last = log[-1] if log else None
    if (
        last is not None
        and entry["outcome"] == "skipped"
        and last["outcome"] == "skipped"
        and (last["kind"], last.get("reason")) == (entry["kind"], entry.get("reason"))
    ):
        merged = copy.deepcopy(last)
        merged["count"] = last.get("count", 1) + entry.get("count", 1)
        merged["until"] = entry.get("until", entry["tick"])
        return [*log[:-1], merged]
    return [*log, entry][-LOG_SIZE:]


def log_entry(
    tick: float,
    kind: str,
    now: float,
    *,
    jobs: list[str] | None = None,
    reason: str | None = None,
    missed: int = 0,
) -> dict[str, Any]:
    """A tick decided at ``now``: fired (its job ids) or skipped (why). ``missed``: the
    ticks before it that the misfire policy coalesced into it."""
    entry: dict[str, Any] = {"tick": tick, "kind": kind, "at": now}
    if reason is None:
        entry.update(outcome="fired", jobs=jobs or [])
    else:
        entry.update(outcome="skipped", reason=reason, count=1 + missed, until=tick)
    if missed:
        entry["missed"] = missed
    return entry
