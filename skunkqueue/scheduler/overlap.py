"""Overlap policies: what a schedule's tick does while an earlier run of it is unfinished.

The guarantee rests on the store, in two halves, so it holds with many workers, many
machines and a leader killed at any point:

* **Never two runs at once** is decided at claim time. A schedule whose policy is not
  ``allow`` gives its tick jobs ``concurrency=1``, so no claim starts one while any job
  of its event is running (``Backend.claim``), whoever fired it.
* **Which ticks run** is decided by the leader as it fires a tick, from the states of the
  schedule's unfinished runs, read from the store just before the atomic ``fire_schedule``
  step that stores the tick's job together with the schedule's new state. The runs the
  decision looks at are tracked in that state (``LIVE``), so a new leader decides as the
  old one would have. A run that finishes between the read and the step can make a tick
  skipped that could have run; never the other way round.

The policies (after Temporal's schedules):

* ``allow`` (the default): every tick runs, runs may overlap.
* ``skip``: a tick that comes while a run is unfinished is skipped (and logged as such).
* ``buffer_one``: a tick that comes while a run is unfinished waits for it, but only one
  waits: a tick that comes while one already waits is skipped.
* ``buffer_all``: every tick runs, one after another.
* ``cancel_other``: a tick cancels the unfinished runs (a running one is stopped by its
  worker at its next heartbeat, through the timeout path, and keeps the reason) and runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..cron import OVERLAP_POLICIES as POLICIES
from ..model import JobRecord, JobState
from ..persistence.base import Backend

__all__ = ["LIVE", "POLICIES", "Runs", "Verdict", "judge", "serialises", "tracks"]

#: The key of a schedule's state that lists the runs its overlap policy must look at:
#: the job ids it fired that were unfinished when last read, oldest first.
LIVE = "live"

_UNFINISHED = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})


@dataclass(frozen=True)
class Verdict:
    """What one tick does: ``fire`` it or not (``reason`` says why not), after cancelling
    the runs in ``cancel``."""

    fire: bool
    reason: str | None = None
    cancel: tuple[str, ...] = ()


def serialises(policy: str) -> bool:
    """Whether the policy keeps a schedule's runs from overlapping (its tick jobs then
    carry ``concurrency=1``)."""
    return policy != "allow"


def tracks(policy: str) -> bool:
    """Whether deciding a tick needs the schedule's unfinished runs."""
    return policy in ("skip", "buffer_one", "cancel_other")


@dataclass
class Runs:
    """The schedule's runs as one step of the leader sees them: the jobs it fires in this
    step (``fresh``: not stored yet, so unfinished) and what it read of the others."""

    fresh: set[str] = field(default_factory=set)
    read: dict[str, JobRecord | None] = field(default_factory=dict)

    def unfinished(self, backend: Backend, state: dict[str, Any], now: float) -> list[str]:
        """The runs in ``state[LIVE]`` still to finish, read from the store once a step;
        the state keeps only those (a finished or expired run is never looked at again)."""
        live = [i for i in state.get(LIVE, []) if isinstance(i, str)]
        for job_id in live:
            if job_id not in self.fresh and job_id not in self.read:
                self.read[job_id] = backend.get(job_id, now)
        still = [i for i in live if i in self.fresh or _unfinished(self.read.get(i))]
        if still:
            state[LIVE] = still
        else:
            state.pop(LIVE, None)
        return still

    def fired(self, state: dict[str, Any], job_ids: Collection[str]) -> None:
        """Jobs fired in this step join the runs the policy looks at."""
        self.fresh.update(job_ids)
        state[LIVE] = [*state.get(LIVE, []), *job_ids]


def _unfinished(record: JobRecord | None) -> bool:
    return record is not None and record.state in _UNFINISHED


def judge(policy: str, unfinished_runs: Sequence[str]) -> Verdict:
    """The verdict on a tick that comes while ``unfinished_runs`` (oldest first) have not
    finished; they include the runs fired earlier in the same step."""
    if policy == "skip" and unfinished_runs:
        return Verdict(False, f"overlap=skip: {unfinished_runs[-1]} has not finished")
    if policy == "buffer_one" and len(unfinished_runs) >= 2:
        return Verdict(False, f"overlap=buffer_one: {unfinished_runs[-1]} already waits")
    if policy == "cancel_other":
        return Verdict(True, cancel=tuple(unfinished_runs))
    if policy not in POLICIES:
        raise ValueError(f"unknown overlap policy {policy!r}")
    return Verdict(True)


def cancel_reason(schedule: str, tick_job: str) -> str:
    """What a run cancelled by ``cancel_other`` keeps as its reason."""
    return f"cancelled by overlap=cancel_other of schedule {schedule}: {tick_job} superseded it"
