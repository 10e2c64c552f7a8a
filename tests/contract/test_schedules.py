"""Stored schedules: insert, replace, list by name, remove, the leader's fenced save, each
write's revision and the compare-and-set of ``save_schedule(expected_revision=...)``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.persistence import Fence, ScheduleRecord

from .support import T0, lead

pytestmark = pytest.mark.schedules  # also run on MongoDB without transactions


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


def stored(schedule: ScheduleRecord, revision: int = 1) -> ScheduleRecord:
    """``schedule`` as ``schedules()`` lists it after its name's ``revision``-th write."""
    return replace(schedule, revision=revision)


def test_save_and_list_round_trips(backend):
    assert backend.save_schedule(nightly(), T0) is True
    assert backend.schedules() == [stored(nightly())]


def test_schedules_are_listed_by_name(backend):
    for name in ["zeta", "alpha", "mid"]:
        backend.save_schedule(ScheduleRecord(name, {"every": 60}, {"event": name}, T0 + 60), T0)
    assert [s.name for s in backend.schedules()] == ["alpha", "mid", "zeta"]


def test_save_replaces_a_schedule_of_the_same_name(backend):
    backend.save_schedule(nightly(), T0)
    changed = nightly(next_fire=T0 + 7200, cron="0 4 * * *")
    changed.updated_at = T0 + 5
    backend.save_schedule(changed, T0 + 5)
    assert backend.schedules() == [stored(changed, revision=2)]


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
    assert backend.save_schedule(nightly(), T0 + 10, fence=fence) is True
    assert backend.schedules() == [stored(nightly())]


def test_fenced_save_by_a_deposed_leader_writes_nothing(backend):
    old = lead(backend, T0, owner="old", ttl=30)
    backend.save_schedule(nightly(), T0, fence=old)
    new = lead(backend, T0 + 31, owner="new", ttl=30)
    assert new.token == old.token + 1
    with pytest.raises(LeaseLost):
        backend.save_schedule(nightly(next_fire=T0 + 99), T0 + 32, fence=old)
    with pytest.raises(LeaseLost):
        backend.save_schedule(ScheduleRecord("extra", {"every": 1}, {}, T0), T0 + 32, fence=old)
    assert backend.schedules() == [stored(nightly())]
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
    assert theirs.save_schedule(nightly(), T0, expected_revision=1) is False
    assert mine.schedules() == [stored(nightly())]
    assert theirs.save_schedule(nightly(), T0, expected_revision=0) is True
    assert [s.revision for s in theirs.schedules() + mine.schedules()] == [1, 1]


# -- revisions ----------------------------------------------------------------------


def test_every_write_raises_the_revision_by_one_and_the_caller_cannot_choose_it(backend):
    mine = nightly()
    mine.revision = 41  # ignored
    revisions = []
    for minutes in range(3):
        backend.save_schedule(replace(mine, next_fire=T0 + 60 * minutes), T0)
        revisions.append(backend.schedules()[0].revision)
    assert revisions == [1, 2, 3]
    assert mine.revision == 41  # the caller's object is left as it was


def test_a_name_stored_again_after_removal_never_reuses_a_revision(backend):
    """Otherwise a leader that read revision 1 of the old schedule would take the new
    schedule's revision 1 for the one it read."""
    backend.save_schedule(nightly(), T0)
    assert backend.remove_schedule("nightly") is True
    backend.save_schedule(nightly(cron="0 4 * * *"), T0 + 1)
    [again] = backend.schedules()
    assert again.revision == 2 and again.spec["cron"] == "0 4 * * *"


def test_revisions_are_per_name(backend):
    backend.save_schedule(nightly(), T0)
    backend.save_schedule(nightly(), T0)
    backend.save_schedule(ScheduleRecord("other", {"every": 5}, {}, T0 + 5), T0)
    assert {s.name: s.revision for s in backend.schedules()} == {"nightly": 2, "other": 1}


# -- save_schedule(expected_revision=...): compare-and-set ------------------------------


def test_expected_revision_zero_inserts_only_what_is_not_stored(backend):
    assert backend.save_schedule(nightly(), T0, expected_revision=0) is True
    assert backend.save_schedule(nightly(next_fire=T0 + 1), T0, expected_revision=0) is False
    assert backend.schedules() == [stored(nightly())]
    backend.remove_schedule("nightly")
    assert backend.save_schedule(nightly(next_fire=T0 + 2), T0, expected_revision=0) is True
    assert backend.schedules() == [stored(nightly(next_fire=T0 + 2), revision=2)]


def test_expected_revision_writes_only_over_the_revision_read(backend):
    backend.save_schedule(nightly(), T0)
    [read] = backend.schedules()
    backend.save_schedule(nightly(next_fire=T0 + 60), T0)  # someone else's write, revision 2
    mine = nightly(next_fire=T0 + 99, cron="0 5 * * *")
    assert backend.save_schedule(mine, T0, expected_revision=read.revision) is False
    assert backend.schedules() == [stored(nightly(next_fire=T0 + 60), revision=2)]
    assert backend.save_schedule(mine, T0, expected_revision=2) is True
    assert backend.schedules() == [stored(mine, revision=3)]


def test_expected_revision_of_a_removed_schedule_does_not_hold(backend):
    backend.save_schedule(nightly(), T0)
    backend.remove_schedule("nightly")
    assert backend.save_schedule(nightly(), T0, expected_revision=1) is False
    assert backend.schedules() == []


def test_a_fenced_compare_and_set_checks_the_fence_first(backend):
    old = lead(backend, T0, owner="old", ttl=30)
    backend.save_schedule(nightly(), T0)
    lead(backend, T0 + 31, owner="new", ttl=30)
    for expected in (0, 1, 2):
        with pytest.raises(LeaseLost):
            backend.save_schedule(nightly(next_fire=T0), T0 + 32, old, expected_revision=expected)
    assert backend.schedules() == [stored(nightly())]


@pytest.mark.parametrize("bad", [-1, 1.0, True, "1"])
def test_a_bad_expected_revision_is_refused_before_anything_is_written(backend, bad):
    with pytest.raises(ValueError, match="expected_revision must be an integer of at least 0"):
        backend.save_schedule(nightly(), T0, expected_revision=bad)
    assert backend.schedules() == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"spec": None}, "spec must be a dict"),
        ({"template": {"when": {1, 2}}}, "template is not JSON"),
        ({"next_fire": float("nan")}, "next_fire must be a finite number"),
        ({"updated_at": "today"}, "updated_at must be a finite number"),
    ],
)
def test_a_malformed_schedule_is_refused_before_anything_is_written(backend, change, error):
    with pytest.raises((TypeError, ValueError), match=error):
        backend.save_schedule(replace(nightly(), **change), T0)
    with pytest.raises(TypeError, match="fence must be a Fence"):
        backend.save_schedule(nightly(), T0, ("scheduler", "leader", 1))
    assert backend.schedules() == []
