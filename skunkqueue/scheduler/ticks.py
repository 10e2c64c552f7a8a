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

The same step carries the schedule's operational state (``schedule_state.py``): runs
asked for by hand (a trigger, a backfill's ticks) leave it in the step that stores their
jobs, so each runs once, and a pause written since the leader's read fails the step's
compare-and-set like any other change. Every tick passes through ``decide.decide``.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import schedule_state
from ..broadcast import broadcast_copies
from ..cron import ScheduleSpec
from ..errors import BackendUnavailable, LeaseLost
from ..model import JobRecord
from ..persistence import rules
from ..persistence.base import Backend, Fence, ScheduleRecord
from ..schedule_state import has_requests
from . import overlap
from .decide import Decision, TickAt, decide

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


def tick_record(
    queue: str,
    schedule: ScheduleRecord,
    tick: float,
    now: float,
    *,
    job_id: str | None = None,
    spec: ScheduleSpec | None = None,
) -> JobRecord:
    """The job of one tick, from the schedule's stored template: due at the tick, plus
    ``spec``'s jitter for it when given; ``job_id`` for a run that is no tick of the
    timetable (one asked for by hand)."""
    template = schedule.template
    return JobRecord(
        id=job_id or tick_job_id(queue, template["event"], tick),
        event=template["event"],
        route=template["route"],
        payload=template["payload"],
        eta=tick + (0.0 if spec is None else spec.delay(schedule.name, tick)),
        created_at=now,
        schedule=schedule.name,
        **{
            **{k: template[k] for k in TEMPLATE_FIELDS if k in template},
            **_one_at_a_time(schedule),
        },
    )


def _one_at_a_time(schedule: ScheduleRecord) -> dict[str, Any]:
    """A policy that keeps runs from overlapping gives the tick's job ``concurrency=1``:
    the store then never starts it while a job of its event runs (``Backend.claim``)."""
    policy = schedule.spec.get("overlap", "allow") if isinstance(schedule.spec, dict) else "allow"
    return {"concurrency": 1} if overlap.serialises(policy) else {}


def tick_jobs(
    backend: Backend,
    schedule: ScheduleRecord,
    tick: float,
    now: float,
    *,
    job_id: str | None = None,
    spec: ScheduleSpec | None = None,
) -> list[JobRecord]:
    job = tick_record(backend.queue, schedule, tick, now, job_id=job_id, spec=spec)
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
    """Fire what is due of ``schedules``: their timetables' ticks and the runs operators
    asked for (``trigger``, ``backfill``), each schedule's in one atomic step with its
    advance and its new state (at most ``rules.MAX_BATCH`` jobs a step); a schedule fired
    is updated in place (``next_fire``, ``updated_at``, ``revision``, ``state``), as stored.

    A schedule this host cannot decode is skipped, so every other one still fires: it is
    logged once per change and kept in ``broken`` (name -> (fingerprint, reason)) until
    its stored record changes. A schedule changed since it was read is not fired
    (``Fired.stale``): the caller reads the schedules again."""
    fired = Fired()
    broken = {} if broken is None else broken
    for schedule in schedules:
        if schedule.next_fire > now and not has_requests(schedule.state):
            continue
        known = broken.get(schedule.name)
        if known is not None and known[0] == fingerprint(schedule):
            continue
        try:
            spec = ScheduleSpec.from_dict(schedule.spec)
            step = plan_step(backend, schedule, spec, now)
            rules.check_jobs(step.jobs)
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
        overflow = step.jobs[rules.MAX_BATCH :]
        if overflow:
            backend.put(overflow, now)
        jobs = step.jobs[: rules.MAX_BATCH]
        if not backend.fire_schedule(schedule, jobs, step.next_fire, now, fence, state=step.state):
            log.info("schedule %s changed since it was read: reading it again", schedule.name)
            fired.stale = True
            continue
        if step.cancel:
            _cancel_others(backend, schedule.name, step, now)
        for entry in step.entries:
            _log_decided(backend.queue, schedule.name, entry, spec)
        schedule.next_fire, schedule.updated_at = step.next_fire, now
        schedule.revision += 1  # what fire_schedule stored
        schedule.state = step.state
        fired.ticks += step.fired
        fired.jobs += len(step.jobs)
    return fired


def _log_decided(queue: str, name: str, entry: dict[str, Any], spec: ScheduleSpec) -> None:
    missed = entry.get("missed", 0)
    note = f" ({missed} earlier ticks missed, misfire={spec.misfire})" if missed else ""
    if entry["outcome"] == "fired":
        run = entry["jobs"][0] if entry["jobs"] else tick_job_id(queue, name, entry["tick"])
        log.info("%s %s fired tick %s%s", entry["kind"], name, run, note)
    else:
        when = schedule_state.instant_text(entry["tick"])
        log.info("%s %s skipped tick %s (%s)%s", entry["kind"], name, when, entry["reason"], note)


def _cancel_others(backend: Backend, name: str, step: Step, now: float) -> None:
    """``cancel_other``: the runs a tick of the stored step superseded are cancelled, a
    running one stopped by its worker (``Backend.cancel(running=True)``). After the step,
    so a step that fails its compare-and-set cancels nothing; a leader that dies in
    between leaves them in the state's runs, and the next tick cancels them."""
    superseded = list(dict.fromkeys(step.cancel))
    reason = overlap.cancel_reason(name, step.newest or "a later tick")
    answers = backend.cancel(superseded, now, reason, running=True)
    for job_id, cancelled in zip(superseded, answers, strict=True):
        if cancelled:
            log.info("schedule %s: cancelled %s (overlap=cancel_other)", name, job_id)


@dataclass
class Step:
    """One schedule's step as planned: the jobs to store, where the timetable moves on
    to, and the state to store with them (requests consumed, gaps, the tick log)."""

    jobs: list[JobRecord]
    next_fire: float
    state: dict[str, Any]
    fired: int = 0  # ticks fired
    #: The log entries of this step, as decided (the stored log merges runs of skips).
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: The schedule's overlap policy, and its unfinished runs as this step sees them.
    policy: str = "allow"
    runs: overlap.Runs = field(default_factory=overlap.Runs)
    #: Runs to cancel once the step is stored (``cancel_other``), and the newest run fired.
    cancel: list[str] = field(default_factory=list)
    newest: str | None = None

    def decide(
        self, backend: Backend, schedule: ScheduleRecord, tick: TickAt, now: float
    ) -> Decision:
        decision = decide(backend, schedule, self.state, tick, now, self.runs, self.policy)
        self.cancel += decision.cancel
        return decision

    def room_for(self, more: list[JobRecord]) -> bool:
        """Whether ``more`` jobs fit in this step; the first tick always does, whatever
        its size (a broadcast's copies beyond one step are put ahead of it)."""
        return not self.jobs or len(self.jobs) + len(more) <= rules.MAX_BATCH

    def decided_tick(
        self,
        tick: TickAt,
        jobs: list[JobRecord] | None,
        reason: str | None,
        now: float,
        missed: int = 0,
    ) -> None:
        """Log ``tick`` as fired with ``jobs``, or skipped (``jobs`` None) for ``reason``."""
        entry_jobs = None if jobs is None else [j.id for j in jobs][:LOGGED_JOB_IDS]
        self.log(
            schedule_state.log_entry(
                tick.tick, tick.kind, now, jobs=entry_jobs, reason=reason, missed=missed
            )
        )
        if jobs is not None:
            self.jobs += jobs
            self.fired += 1
            self.newest = jobs[0].id if jobs else self.newest
            if overlap.tracks(self.policy):
                self.runs.fired(self.state, [j.id for j in jobs])

    def log(self, entry: dict[str, Any]) -> None:
        self.state["log"] = schedule_state.logged(self.state.get("log", []), entry)
        self.entries.append(entry)

    def gap(self, start: float, end: float) -> None:
        gaps = schedule_state.add_range(self.state.get("gaps", []), start, end)
        self.state["gaps"] = schedule_state.bounded(gaps)

    def ran(self, start: float, end: float) -> None:
        self.state["gaps"] = schedule_state.remove_range(self.state.get("gaps", []), start, end)


#: Job ids a log entry keeps of one tick (a broadcast tick has one per live worker).
LOGGED_JOB_IDS = 10


def plan_step(backend: Backend, schedule: ScheduleRecord, spec: ScheduleSpec, now: float) -> Step:
    """Decide what one step of ``schedule`` fires: its timetable's due ticks first (they
    are the ones late), then runs requested by hand, then backfilled ticks, each through
    ``decide``, in as many as one step's ``rules.MAX_BATCH`` jobs take."""
    step = Step([], schedule.next_fire, copy.deepcopy(schedule.state), policy=spec.overlap)
    if schedule.next_fire <= now:
        _plan_timetable(backend, schedule, spec, now, step)
    _plan_triggers(backend, schedule, now, step)
    _plan_backfill(backend, schedule, spec, now, step)
    return step


def _plan_timetable(
    backend: Backend, schedule: ScheduleRecord, spec: ScheduleSpec, now: float, step: Step
) -> None:
    """The due ticks per the misfire policy; every tick passed over without a run (missed,
    or skipped by ``decide``) becomes a gap a backfill can run later."""
    ticks = spec.due_ticks(schedule.next_fire, now)
    first = ticks[0] if ticks else spec.next_after(now)
    missed = 0
    if first > schedule.next_fire:
        missed = schedule_state.count_ticks(
            spec, [[schedule.next_fire, first]], schedule_state.MAX_COUNTED
        )
        step.gap(schedule.next_fire, first)
    if not ticks and missed:  # the misfire policy dropped every due tick
        entry = schedule_state.log_entry(schedule.next_fire, "cron", now, reason="missed")
        step.log({**entry, "count": missed})
    done = 0
    for tick in ticks:
        at = TickAt(tick, "cron", tick_job_id(backend.queue, schedule.template["event"], tick))
        decision = step.decide(backend, schedule, at, now)
        jobs = tick_jobs(backend, schedule, tick, now, spec=spec) if decision.fire else None
        if jobs is not None and not step.room_for(jobs):
            break
        step.decided_tick(at, jobs, decision.reason, now, missed if done == 0 else 0)
        if jobs is None:
            step.gap(tick, spec.next_after(tick))
        done += 1
    step.next_fire = ticks[done] if done < len(ticks) else spec.next_after(now)


def _plan_triggers(backend: Backend, schedule: ScheduleRecord, now: float, step: Step) -> None:
    """Runs asked for by hand, oldest first: each leaves the requests in the step that
    fires it (or decides to skip it), so it runs once, whichever leader gets there."""
    requests = step.state.get("triggers", [])
    done = 0
    for request in requests:
        at = TickAt(request["at"], "trigger", request["id"])
        decision = step.decide(backend, schedule, at, now)
        jobs = None
        if decision.fire:
            jobs = tick_jobs(backend, schedule, now, now, job_id=request["id"])
            if not step.room_for(jobs):
                break
        step.decided_tick(at, jobs, decision.reason, now)
        done += 1
    if requests:
        step.state["triggers"] = requests[done:]
        if not step.state["triggers"]:
            del step.state["triggers"]


def _plan_backfill(
    backend: Backend, schedule: ScheduleRecord, spec: ScheduleSpec, now: float, step: Step
) -> None:
    """The never-run ticks of the requested ranges, oldest first, under their own cron job
    ids (so a put by id also refuses a second run while the record exists). A tick fired
    leaves the gaps; one skipped stays there, and leaves the request either way."""
    requests = step.state.get("backfill", [])
    if not requests:
        return
    gaps = step.state.get("gaps", [])
    targets: schedule_state.Ranges = []
    for lo, hi in requests:
        targets += schedule_state.intersect(gaps, lo, hi)
    limit = rules.MAX_BATCH
    processed, stopped = 0, None
    for tick in schedule_state.ticks_in(spec, targets, limit):
        at = TickAt(tick, "backfill", tick_job_id(backend.queue, schedule.template["event"], tick))
        decision = step.decide(backend, schedule, at, now)
        jobs = tick_jobs(backend, schedule, tick, now, spec=spec) if decision.fire else None
        if jobs is not None and not step.room_for(jobs):
            stopped = tick
            break
        step.decided_tick(at, jobs, decision.reason, now)
        if jobs is not None:
            step.ran(tick, spec.next_after(tick))
        processed += 1
    if stopped is None and processed < limit:
        remaining: schedule_state.Ranges = []  # every requested tick is decided
    else:
        until = stopped if stopped is not None else spec.next_after(tick)
        remaining = schedule_state.remove_range(requests, requests[0][0], until)
    if remaining:
        step.state["backfill"] = remaining
    else:
        del step.state["backfill"]


def next_fire_time(
    schedules: list[ScheduleRecord], broken: dict[str, tuple[str, str]] | None = None
) -> float | None:
    """The earliest tick to wake for (now, for a schedule with runs requested by hand); a
    broken schedule's is not (it would be now, forever)."""
    skip = broken or {}
    return min(
        (
            min(s.next_fire, s.updated_at) if has_requests(s.state) else s.next_fire
            for s in schedules
            if s.name not in skip
        ),
        default=None,
    )
