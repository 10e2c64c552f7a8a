"""The one place where a tick is fired or skipped.

Every tick the leader comes to passes through ``decide``, whatever brought it there: the
timetable (``cron``), an operator's request to run now (``trigger``) or to run the ticks
of a range that never ran (``backfill``). It sees the schedule as read, its state as the
step being planned has changed it so far (a tick fired earlier in the same step is in
its log, with its job ids), and the tick at hand; a skip names its reason, which the
tick log keeps.

What it decides is written in the leader's atomic ``fire_schedule`` step with the jobs
and the schedule's new state, a compare-and-set on the revision the leader read: an
operator's change that lands in between (a pause) makes the step write nothing, and the
leader decides again on what it reads next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..persistence.base import Backend, ScheduleRecord
from ..schedule_state import is_paused
from . import overlap


@dataclass(frozen=True)
class TickAt:
    """A tick to decide: its nominal instant, what brought it, and its run's job id."""

    tick: float
    kind: str  # one of schedule_state.KINDS
    job_id: str


@dataclass(frozen=True)
class Decision:
    """Fire the tick or not (``reason`` says why not); ``cancel``: runs the overlap policy
    ``cancel_other`` stops once the step that fires the tick is stored."""

    fire: bool
    reason: str | None = None
    cancel: tuple[str, ...] = ()


FIRE = Decision(True)


def decide(
    backend: Backend,
    schedule: ScheduleRecord,
    state: dict[str, Any],
    tick: TickAt,
    now: float,
    runs: overlap.Runs | None = None,
    policy: str = "allow",
) -> Decision:
    """Fire ``tick``, or skip it and say why.

    A paused schedule skips its timetable's ticks; a run asked for by hand (``trigger``,
    ``backfill``) is an operator's explicit act and runs while paused. Then the overlap
    ``policy`` (``scheduler/overlap.py``) judges every tick, whatever brought it, by the
    schedule's unfinished runs: those in ``state[overlap.LIVE]``, read through ``runs``
    (one read per run and step), and those fired earlier in the step."""
    if tick.kind == "cron" and is_paused(state):
        return Decision(False, "paused")
    if not overlap.tracks(policy):
        return FIRE
    verdict = overlap.judge(policy, (runs or overlap.Runs()).unfinished(backend, state, now))
    return Decision(verdict.fire, verdict.reason, verdict.cancel)
