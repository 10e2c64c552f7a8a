"""A schedule's ``state``: stored as given by ``save_schedule``, listed by ``schedules()``,
and replaced by ``fire_schedule(..., state=...)`` in the same atomic step as the jobs and
the advance, or kept as stored when the leader passes none."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.persistence import Backend, ScheduleRecord

from .support import job, lead

pytestmark = pytest.mark.schedules  # also run on MongoDB without transactions

NOW = float(int(time.time())) + 86400.0  # records here expire: see test_fire_schedule.py
PAUSED = {"paused": {"at": NOW - 60, "note": "partner API down"}, "log": [{"tick": NOW - 60}]}


def beat(state: dict | None = None) -> ScheduleRecord:
    return ScheduleRecord(
        name="beat",
        spec={"every": 60.0},
        template={"event": "tests.beat", "route": "beats", "payload": "{}"},
        next_fire=NOW,
        updated_at=NOW - 3600,
        state={} if state is None else state,
    )


def read(backend: Backend) -> ScheduleRecord:
    [found] = [s for s in backend.schedules() if s.name == "beat"]
    return found


def test_a_schedule_saved_without_state_reads_as_empty(backend):
    backend.save_schedule(beat(), NOW - 3600)
    assert read(backend).state == {}


def test_state_round_trips_and_is_replaced_by_a_save(backend):
    backend.save_schedule(beat(PAUSED), NOW - 3600)
    assert read(backend).state == PAUSED
    backend.save_schedule(beat({"log": []}), NOW - 3500, expected_revision=1)
    assert (read(backend).state, read(backend).revision) == ({"log": []}, 2)


def test_a_fire_without_state_keeps_the_stored_state(backend):
    backend.save_schedule(beat(PAUSED), NOW - 3600)
    fence = lead(backend, NOW)
    assert backend.fire_schedule(read(backend), [], NOW + 60, NOW, fence) is True
    assert (read(backend).state, read(backend).next_fire) == (PAUSED, NOW + 60)


def test_a_fire_with_state_replaces_it_with_the_jobs_and_the_advance(backend):
    backend.save_schedule(beat(PAUSED), NOW - 3600)
    schedule = read(backend)
    fence = lead(backend, NOW)
    fired = {"log": [{"tick": NOW, "jobs": ["beat-now"]}]}
    tick = job("beat-now", route="beats", eta=NOW, schedule="beat")
    assert backend.fire_schedule(schedule, [tick], NOW + 60, NOW, fence, state=fired) is True
    assert read(backend) == replace(
        schedule, next_fire=NOW + 60, updated_at=NOW, revision=schedule.revision + 1, state=fired
    )
    assert backend.get("beat-now", NOW).state == "queued"


def test_a_fire_after_a_state_change_is_refused_and_keeps_the_change(backend):
    """A pause written between the leader's read and its step wins: the step that would
    have replaced the state (with the request consumed) writes nothing."""
    backend.save_schedule(beat({"triggers": [{"id": "t1"}]}), NOW - 3600)
    schedule = read(backend)
    paused = {**schedule.state, **PAUSED}
    assert backend.save_schedule(replace(schedule, state=paused), NOW, expected_revision=1)
    fence = lead(backend, NOW)
    tick = job("t1", route="beats", eta=NOW, schedule="beat")
    assert backend.fire_schedule(schedule, [tick], NOW + 60, NOW, fence, state={}) is False
    assert read(backend).state == paused
    assert backend.get("t1", NOW) is None


def test_a_stale_fence_writes_no_state(backend):
    backend.save_schedule(beat(PAUSED), NOW - 3600)
    fence = lead(backend, NOW, owner="old", ttl=30)
    lead(backend, NOW + 31, owner="new", ttl=30)
    with pytest.raises(LeaseLost):
        backend.fire_schedule(read(backend), [], NOW + 60, NOW + 31, fence, state={})
    assert read(backend).state == PAUSED


@pytest.mark.parametrize(
    "state, error",
    [([1], TypeError), ({"at": float("nan")}, TypeError), ({"x": object()}, TypeError)],
)
def test_a_state_that_is_not_a_json_object_is_refused_before_any_write(backend, state, error):
    backend.save_schedule(beat(), NOW - 3600)
    schedule = read(backend)
    fence = lead(backend, NOW)
    with pytest.raises(error, match="state"):
        backend.fire_schedule(schedule, [], NOW + 60, NOW, fence, state=state)
    with pytest.raises(error, match="state"):
        backend.save_schedule(replace(schedule, state=state), NOW)
    assert read(backend) == schedule
