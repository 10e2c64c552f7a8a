"""Turning stored schedules into tick jobs, exactly once per tick.

A schedule's ``next_fire`` is the ledger of its ticks. The backend's ``fire_schedule``
stores a tick's jobs and moves ``next_fire`` past the tick in one atomic step, so a tick
the schedule was advanced past is never fired by it again, whatever became of its job
record (run, expired after ``result_ttl`` and deleted), and a tick it was not advanced
past was not fired at all: a leader that dies before the step leaves the tick to its
successor, one that dies after it leaves nothing to repeat. The step is a compare-and-set
on the schedule's revision, so a change the leader did not make since it read the
schedule (a redeploy's new expression or template, a removal) wins: the step writes
nothing and the leader reads the schedules again.

A tick's job id is still derived from (queue, event, tick instant), so two schedules of
one event, or a MongoDB standalone server (which cannot make the step atomic), store a
tick once while its record exists. A long catch-up (``misfire='all'``) is fired in steps
of at most ``rules.MAX_BATCH`` jobs, each moving ``next_fire`` to the first tick it left
out; the leader fires the next step on its next turn.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from ..broadcast import broadcast_copies
from ..cron import ScheduleSpec
from ..errors import BackendUnavailable, LeaseLost
from ..model import JobRecord
from ..persistence import rules
from ..persistence.base import Backend, Fence, ScheduleRecord

log = logging.getLogger("skunkqueue.scheduler")

TEMPLATE_FIELDS = (
    "serializer",
    "max_deliveries",
    "result_ttl",
    "timeout",
    "retry",
    "concurrency",
)


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


@dataclass
class Fired:
    """What one ``fire_due`` did: ticks fired (and moved past), their jobs, and whether a
    schedule had changed under the leader (then its list of schedules is stale)."""

    ticks: int = 0
    jobs: int = 0
    stale: bool = False


def fire_due(
    backend: Backend,
    schedules: list[ScheduleRecord],
    now: float,
    fence: Fence,
    broken: dict[str, tuple[str, str]] | None = None,
) -> Fired:
    """Fire the due ticks of ``schedules``, each schedule's in one atomic step with its
    advance (at most ``rules.MAX_BATCH`` jobs a step); a schedule fired is updated in
    place (``next_fire``, ``updated_at``, ``revision``), as stored.

    A schedule this host cannot decode is skipped, so every other one still fires: it is
    logged once per change and kept in ``broken`` (name -> (fingerprint, reason)) until
    its stored record changes. A schedule changed since it was read is not fired
    (``Fired.stale``): the caller reads the schedules again."""
    fired = Fired()
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
            step, jobs = one_step(backend, schedule, ticks, now)
            rules.check_jobs(jobs)
            next_fire = ticks[len(step)] if len(step) < len(ticks) else spec.next_after(now)
        except (BackendUnavailable, LeaseLost):
            raise  # the store, not the record: the scheduler backs off and tries again
        except Exception as exc:  # noqa: BLE001 - a stored record must not stop the others
            broken[schedule.name] = (fingerprint(schedule), f"{type(exc).__name__}: {exc}")
            log.warning(
                "schedule %s cannot be fired here and is skipped until it changes: %s",
                schedule.name,
                broken[schedule.name][1],
            )
            continue
        broken.pop(schedule.name, None)
        # A tick with more broadcast copies than one step takes: the rest are put first,
        # stored once by id, and the step fires the tick with the copies it takes.
        overflow = jobs[rules.MAX_BATCH :]
        if overflow:
            backend.put(overflow, now)
        if not backend.fire_schedule(schedule, jobs[: rules.MAX_BATCH], next_fire, now, fence):
            log.info("schedule %s changed since it was read: reading it again", schedule.name)
            fired.stale = True
            continue
        missed = "" if len(ticks) <= 1 else f" ({len(ticks)} ticks due, misfire={spec.misfire})"
        for tick in step:
            log.info(
                "cron %s fired tick %s%s",
                schedule.name,
                tick_job_id(backend.queue, schedule.name, tick),
                missed,
            )
        schedule.next_fire, schedule.updated_at = next_fire, now
        schedule.revision += 1  # what fire_schedule stored
        fired.ticks += len(step)
        fired.jobs += len(jobs)
    return fired


def one_step(
    backend: Backend, schedule: ScheduleRecord, ticks: list[float], now: float
) -> tuple[list[float], list[JobRecord]]:
    """The first of ``ticks`` whose jobs one ``fire_schedule`` takes (``rules.MAX_BATCH``
    jobs; always at least one tick, whose jobs may be more), and their jobs."""
    step: list[float] = []
    jobs: list[JobRecord] = []
    for tick in ticks:
        more = tick_jobs(backend, schedule, tick, now)
        if step and len(jobs) + len(more) > rules.MAX_BATCH:
            break
        step.append(tick)
        jobs += more
    return step, jobs


def next_fire_time(
    schedules: list[ScheduleRecord], broken: dict[str, tuple[str, str]] | None = None
) -> float | None:
    """The earliest tick to wake for; a broken schedule's is not (it would be now, forever)."""
    skip = broken or {}
    return min((s.next_fire for s in schedules if s.name not in skip), default=None)
