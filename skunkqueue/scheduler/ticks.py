"""Turning stored schedules into tick jobs, exactly once per tick.

A tick's job id is derived from (queue, event, tick instant), so however many leaders
fire the same tick, ``put`` stores it once. Advancing ``next_fire`` afterwards only
saves work; it is not what makes firing correct.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from ..broadcast import broadcast_copies
from ..cron import ScheduleSpec
from ..model import JobRecord
from ..persistence import rules
from ..persistence.base import Backend, Fence, ScheduleRecord

log = logging.getLogger("skunkqueue.scheduler")

TEMPLATE_FIELDS = ("serializer", "max_deliveries", "result_ttl", "timeout", "retry")


def tick_job_id(queue: str, event: str, tick: float) -> str:
    instant = datetime.fromtimestamp(tick, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{queue}:{event}@{instant}"


def tick_record(queue: str, schedule: ScheduleRecord, tick: float, now: float) -> JobRecord:
    """The job of one tick, from the schedule's stored template."""
    template = schedule.template
    return JobRecord(
        id=tick_job_id(queue, template["event"], tick),
        event=template["event"],
        route=template["route"],
        payload=template["payload"],
        eta=tick,
        created_at=now,
        schedule=schedule.name,
        **{k: template[k] for k in TEMPLATE_FIELDS if k in template},
    )


def tick_jobs(
    backend: Backend, schedule: ScheduleRecord, tick: float, now: float
) -> list[JobRecord]:
    job = tick_record(backend.queue, schedule, tick, now)
    if schedule.template.get("queue_type") == "broadcast":
        return broadcast_copies(backend, job, now)
    return [job]


def schedule_problem(schedule: ScheduleRecord, now: float) -> str | None:
    """Why this host cannot fire ``schedule`` (a time zone it does not know, an expression
    its croniter reads otherwise, a template that makes no valid job), or ``None``."""
    try:
        spec = ScheduleSpec.from_dict(schedule.spec)
        tick = spec.next_after(now)
        rules.check_jobs([tick_record("probe", schedule, tick, now)])
    except Exception as exc:  # noqa: BLE001 - whatever a stored record makes our code raise
        return f"{type(exc).__name__}: {exc}"
    return None


def fingerprint(schedule: ScheduleRecord) -> str:
    """Changes whenever a redeploy or a user changes what the schedule is."""
    return json.dumps([schedule.spec, schedule.template], sort_keys=True, default=repr)


def fire_due(
    backend: Backend,
    schedules: list[ScheduleRecord],
    now: float,
    fence: Fence,
    broken: dict[str, tuple[str, str]] | None = None,
) -> int:
    """Fire every due tick of ``schedules`` and advance them; returns jobs stored.

    A schedule this host cannot decode is skipped, so every other one still fires: it is
    logged once per change and kept in ``broken`` (name -> (fingerprint, reason)) until
    its stored record changes."""
    stored = 0
    broken = {} if broken is None else broken
    for schedule in schedules:
        if schedule.next_fire > now:
            continue
        known = broken.get(schedule.name)
        if known is not None and known[0] == fingerprint(schedule):
            continue
        try:
            spec = ScheduleSpec.from_dict(schedule.spec)
            ticks = spec.due_ticks(schedule.next_fire, now)
            jobs = [job for tick in ticks for job in tick_jobs(backend, schedule, tick, now)]
            rules.check_jobs(jobs)
            next_fire = spec.next_after(now)
        except Exception as exc:  # noqa: BLE001 - a stored record must not stop the others
            broken[schedule.name] = (fingerprint(schedule), f"{type(exc).__name__}: {exc}")
            log.warning(
                "schedule %s cannot be fired here and is skipped until it changes: %s",
                schedule.name,
                broken[schedule.name][1],
            )
            continue
        broken.pop(schedule.name, None)
        if jobs:
            stored += sum(backend.put(jobs, now))
        missed = "" if len(ticks) <= 1 else f" ({len(ticks)} ticks, misfire={spec.misfire})"
        for tick in ticks:
            log.info(
                "cron %s fired tick %s%s",
                schedule.name,
                tick_job_id(backend.queue, schedule.name, tick),
                missed,
            )
        schedule.next_fire = next_fire
        schedule.updated_at = now
        backend.save_schedule(schedule, now, fence)
    return stored


def next_fire_time(
    schedules: list[ScheduleRecord], broken: dict[str, tuple[str, str]] | None = None
) -> float | None:
    """The earliest tick to wake for; a broken schedule's is not (it would be now, forever)."""
    skip = broken or {}
    return min((s.next_fire for s in schedules if s.name not in skip), default=None)
