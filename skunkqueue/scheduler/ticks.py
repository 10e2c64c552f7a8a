"""Turning stored schedules into tick jobs, exactly once per tick.

A tick's job id is derived from (queue, event, tick instant), so however many leaders
fire the same tick, ``put`` stores it once. Advancing ``next_fire`` afterwards only
saves work; it is not what makes firing correct.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from ..broadcast import broadcast_copies
from ..cron import ScheduleSpec
from ..model import JobRecord
from ..persistence.base import Backend, Fence, ScheduleRecord

log = logging.getLogger("skunkqueue.scheduler")

TEMPLATE_FIELDS = ("serializer", "max_deliveries", "result_ttl", "timeout", "retry")


def tick_job_id(queue: str, event: str, tick: float) -> str:
    instant = datetime.fromtimestamp(tick, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{queue}:{event}@{instant}"


def tick_jobs(
    backend: Backend, schedule: ScheduleRecord, tick: float, now: float
) -> list[JobRecord]:
    template = schedule.template
    job = JobRecord(
        id=tick_job_id(backend.queue, template["event"], tick),
        event=template["event"],
        route=template["route"],
        payload=template["payload"],
        eta=tick,
        created_at=now,
        schedule=schedule.name,
        **{k: template[k] for k in TEMPLATE_FIELDS if k in template},
    )
    if template.get("queue_type") == "broadcast":
        return broadcast_copies(backend, job, now)
    return [job]


def fire_due(backend: Backend, schedules: list[ScheduleRecord], now: float, fence: Fence) -> int:
    """Fire every due tick of ``schedules`` and advance them; returns jobs stored."""
    stored = 0
    for schedule in schedules:
        if schedule.next_fire > now:
            continue
        spec = ScheduleSpec.from_dict(schedule.spec)
        ticks = spec.due_ticks(schedule.next_fire, now)
        jobs = [job for tick in ticks for job in tick_jobs(backend, schedule, tick, now)]
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
        schedule.next_fire = spec.next_after(now)
        schedule.updated_at = now
        backend.save_schedule(schedule, now, fence)
    return stored


def next_fire_time(schedules: list[ScheduleRecord]) -> float | None:
    return min((s.next_fire for s in schedules), default=None)
