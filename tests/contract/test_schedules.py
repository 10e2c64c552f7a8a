"""Stored schedules: insert, replace, list by name, remove, and the leader's fenced save."""

from __future__ import annotations

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.persistence import Fence, ScheduleRecord

from .support import T0, lead


def nightly(next_fire: float = T0 + 3600, **spec) -> ScheduleRecord:
    return ScheduleRecord(
        name="nightly",
        spec={"cron": "0 3 * * *", "timezone": "Europe/Paris", "misfire": "skip", **spec},
        template={
            "event": "reports.build",
            "route": "reports",
            "payload": '{"kwargs": {"full": true}}',
            "retry": {"max_retries": 2, "backoff": [5, 30]},
            "timeout": 600.0,
        },
        next_fire=next_fire,
        updated_at=T0,
    )


def test_save_and_list_round_trips(backend):
    backend.save_schedule(nightly(), T0)
    assert backend.schedules() == [nightly()]


def test_schedules_are_listed_by_name(backend):
    for name in ["zeta", "alpha", "mid"]:
        backend.save_schedule(ScheduleRecord(name, {"every": 60}, {"event": name}, T0 + 60), T0)
    assert [s.name for s in backend.schedules()] == ["alpha", "mid", "zeta"]


def test_save_replaces_a_schedule_of_the_same_name(backend):
    backend.save_schedule(nightly(), T0)
    changed = nightly(next_fire=T0 + 7200, cron="0 4 * * *")
    changed.updated_at = T0 + 5
    backend.save_schedule(changed, T0 + 5)
    assert backend.schedules() == [changed]


def test_remove_schedule(backend):
    backend.save_schedule(nightly(), T0)
    backend.save_schedule(ScheduleRecord("other", {"every": 5}, {}, T0 + 5), T0)
    assert backend.remove_schedule("nightly") is True
    assert [s.name for s in backend.schedules()] == ["other"]
    assert backend.remove_schedule("nightly") is False
    assert backend.remove_schedule("never") is False


def test_saved_schedule_is_a_snapshot(backend):
    schedule = nightly()
    backend.save_schedule(schedule, T0)
    schedule.template["event"] = "mutated"
    schedule.next_fire = 0.0
    [stored] = backend.schedules()
    assert (stored.template["event"], stored.next_fire) == ("reports.build", T0 + 3600)


def test_fenced_save_by_the_current_leader(backend):
    fence = lead(backend, T0, ttl=30)
    backend.save_schedule(nightly(), T0 + 10, fence=fence)
    assert backend.schedules() == [nightly()]


def test_fenced_save_by_a_deposed_leader_writes_nothing(backend):
    old = lead(backend, T0, owner="old", ttl=30)
    backend.save_schedule(nightly(), T0, fence=old)
    new = lead(backend, T0 + 31, owner="new", ttl=30)
    assert new.token == old.token + 1
    with pytest.raises(LeaseLost):
        backend.save_schedule(nightly(next_fire=T0 + 99), T0 + 32, fence=old)
    with pytest.raises(LeaseLost):
        backend.save_schedule(ScheduleRecord("extra", {"every": 1}, {}, T0), T0 + 32, fence=old)
    assert backend.schedules() == [nightly()]
    backend.save_schedule(nightly(next_fire=T0 + 99), T0 + 32, fence=new)
    assert [s.next_fire for s in backend.schedules()] == [T0 + 99]


def test_fenced_save_after_the_lease_expired_writes_nothing(backend):
    fence = lead(backend, T0, ttl=30)
    with pytest.raises(LeaseLost):
        backend.save_schedule(nightly(), T0 + 31, fence=fence)
    with pytest.raises(LeaseLost):
        backend.save_schedule(nightly(), T0, fence=Fence(fence.name, fence.owner, fence.token + 1))
    assert backend.schedules() == []


def test_schedules_are_per_queue(store):
    mine, theirs = store.open(), store.open(queue=store.queue + "-other")
    mine.save_schedule(nightly(), T0)
    assert theirs.schedules() == []
    assert theirs.remove_schedule("nightly") is False
    assert mine.schedules() == [nightly()]
