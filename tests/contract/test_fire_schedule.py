"""fire_schedule: a tick's jobs and the schedule's advance past it, in one atomic step,
fenced and compare-and-set on the revision the leader read.

Also run on MongoDB without transactions (``mongodb-standalone``), whose fallback keeps
every promise here: these tests change the store only between calls, never during one.

The clock starts a day ahead of real time, not at ``support.T0`` (2023): records here
expire, and MongoDB's TTL monitor deletes records by the real clock.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.jobs import JobRecord, Outcome
from skunkqueue.persistence import Backend, Fence, ScheduleRecord, rules
from skunkqueue.scheduler.ticks import fire_due, tick_job_id

from .support import job, lead

pytestmark = pytest.mark.schedules

NOW = float(int(time.time())) + 86400.0
EVERY = 60.0


def every_minute(next_fire: float = NOW, **template: object) -> ScheduleRecord:
    return ScheduleRecord(
        name="beat",
        spec={"every": EVERY, "misfire": "all"},
        template={"event": "tests.beat", "route": "beats", "payload": "{}", **template},
        next_fire=next_fire,
        updated_at=NOW - 3600,
    )


def read(backend: Backend, name: str = "beat") -> ScheduleRecord:
    [found] = [s for s in backend.schedules() if s.name == name]
    return found


def tick(at: float, **fields: object) -> JobRecord:
    return job(f"beat@{at:.0f}", route="beats", eta=at, schedule="beat", **fields)


def stored_ids(backend: Backend, now: float) -> list[str]:
    return sorted(r.id for r in backend.list_jobs(now, limit=1000))


def test_the_jobs_are_stored_and_the_schedule_advanced_in_one_step(backend):
    backend.save_schedule(every_minute(), NOW - 3600)
    schedule = read(backend)
    fence = lead(backend, NOW)
    jobs = [tick(NOW), tick(NOW + EVERY)]  # one due, one not yet: states as put gives them
    assert backend.fire_schedule(schedule, jobs, NOW + 2 * EVERY, NOW + 1, fence) is True

    assert backend.get(tick(NOW).id, NOW + 1).state == "queued"
    assert backend.get(tick(NOW + EVERY).id, NOW + 1).state == "scheduled"
    assert [r.id for r in backend.claim(["beats"], "w", NOW + 1, lease=30)] == [tick(NOW).id]
    after = read(backend)
    assert after == replace(
        schedule, next_fire=NOW + 2 * EVERY, updated_at=NOW + 1, revision=schedule.revision + 1
    )


def test_an_advance_with_no_jobs_is_a_fenced_compare_and_set(backend):
    """What a misfire policy that skips every due tick does."""
    backend.save_schedule(every_minute(), NOW)
    schedule = read(backend)
    fence = lead(backend, NOW)
    assert backend.fire_schedule(schedule, [], NOW + EVERY, NOW + 1, fence) is True
    assert backend.fire_schedule(schedule, [], NOW + 9 * EVERY, NOW + 1, fence) is False
    assert (read(backend).next_fire, read(backend).revision) == (NOW + EVERY, 2)
    assert stored_ids(backend, NOW + 1) == []


CHANGES = {
    "saved again, as it was": lambda b: b.save_schedule(every_minute(), NOW),
    "a new template": lambda b: b.save_schedule(every_minute(route="elsewhere"), NOW),
    "a new expression": lambda b: b.save_schedule(replace(every_minute(), spec={"every": 5}), NOW),
    "advanced by another step of this leader": lambda b: b.fire_schedule(
        read(b), [], NOW + EVERY, NOW, lead(b, NOW, owner="leader")
    ),
    "removed": lambda b: b.remove_schedule("beat"),
    "removed and stored again": lambda b: (
        b.remove_schedule("beat"),
        b.save_schedule(every_minute(), NOW),
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_since_the_read_wins_and_nothing_is_written(backend, change):
    backend.save_schedule(every_minute(), NOW - 3600)
    schedule = read(backend)
    CHANGES[change](backend)
    after_change = backend.schedules()
    fence = lead(backend, NOW + 1, owner="leader")
    assert backend.fire_schedule(schedule, [tick(NOW)], NOW + EVERY, NOW + 1, fence) is False
    assert backend.get(tick(NOW).id, NOW + 1) is None
    assert backend.schedules() == after_change


@pytest.mark.parametrize("how", ["taken over", "expired", "another token"])
def test_a_stale_fence_raises_and_writes_nothing(backend, how):
    backend.save_schedule(every_minute(), NOW - 3600)
    schedule = read(backend)
    fence = lead(backend, NOW, owner="old", ttl=30)
    if how == "taken over":
        lead(backend, NOW + 31, owner="new", ttl=30)
    if how == "another token":
        fence = Fence(fence.name, fence.owner, fence.token + 1)
    at = NOW + 31 if how != "another token" else NOW + 1
    with pytest.raises(LeaseLost):
        backend.fire_schedule(schedule, [tick(NOW)], NOW + EVERY, at, fence)
    with pytest.raises(LeaseLost):  # the fence is checked before the revision
        backend.fire_schedule(replace(schedule, revision=7), [], NOW + EVERY, at, fence)
    assert backend.get(tick(NOW).id, at) is None
    assert backend.schedules() == [schedule]


def test_the_lease_holds_through_its_until(backend):
    backend.save_schedule(every_minute(), NOW)
    fence = lead(backend, NOW, ttl=30)
    assert backend.fire_schedule(read(backend), [tick(NOW)], NOW + EVERY, NOW + 30, fence)


def test_a_tick_whose_record_exists_is_left_untouched_and_the_schedule_still_advances(backend):
    backend.put([tick(NOW, payload='{"first": true}')], NOW)
    backend.claim(["beats"], "w", NOW, lease=30)
    backend.save_schedule(every_minute(), NOW)
    fence = lead(backend, NOW)
    assert backend.fire_schedule(read(backend), [tick(NOW)], NOW + EVERY, NOW + 1, fence)
    kept = backend.get(tick(NOW).id, NOW + 1)
    assert (kept.state, kept.owner, kept.payload) == ("running", "w", '{"first": true}')
    assert read(backend).next_fire == NOW + EVERY


def test_a_tick_whose_record_expired_is_stored_anew(backend):
    """As put does: an expired id is free again (the schedule's advance is what keeps a
    tick from being fired twice, not its record)."""
    backend.put([tick(NOW, result_ttl=1.0)], NOW)
    backend.claim(["beats"], "w", NOW, lease=30)
    backend.finish([Outcome(tick(NOW).id, "complete", result="1")], "w", NOW)
    backend.save_schedule(every_minute(), NOW)
    fence = lead(backend, NOW + 5)
    assert backend.fire_schedule(read(backend), [tick(NOW)], NOW + EVERY, NOW + 5, fence)
    assert backend.get(tick(NOW).id, NOW + 5).state == "queued"


def test_one_step_takes_max_batch_jobs_and_no_more(backend):
    backend.save_schedule(every_minute(), NOW)
    schedule = read(backend)
    fence = lead(backend, NOW)
    too_many = [tick(NOW + i) for i in range(rules.MAX_BATCH + 1)]
    with pytest.raises(ValueError, match=f"at most {rules.MAX_BATCH} jobs in one step"):
        backend.fire_schedule(schedule, too_many, NOW + EVERY, NOW, fence)
    assert stored_ids(backend, NOW) == [] and backend.schedules() == [schedule]
    assert backend.fire_schedule(schedule, too_many[:-1], NOW + EVERY, NOW, fence) is True
    assert len(stored_ids(backend, NOW)) == rules.MAX_BATCH


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"jobs": [replace(tick(NOW), eta=float("nan"))]}, "eta must be a finite number"),
        ({"jobs": [tick(NOW), "not a job"]}, "put takes JobRecords"),
        ({"next_fire": float("inf")}, "next_fire must be a finite number"),
        ({"fence": None}, "fence must be a Fence"),
        ({"read": "beat"}, "schedules are ScheduleRecords"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(backend, args, error):
    backend.save_schedule(every_minute(), NOW)
    call = {
        "read": read(backend),
        "jobs": [tick(NOW)],
        "next_fire": NOW + EVERY,
        "now": NOW,
        "fence": lead(backend, NOW),
        **args,
    }
    with pytest.raises((TypeError, ValueError), match=error):
        backend.fire_schedule(**call)
    assert stored_ids(backend, NOW) == []
    assert read(backend).revision == 1


def test_every_write_of_a_schedule_raises_its_revision(backend):
    fence = lead(backend, NOW)
    backend.save_schedule(every_minute(), NOW)
    seen = [read(backend).revision]
    backend.fire_schedule(read(backend), [], NOW + EVERY, NOW, fence)
    seen.append(read(backend).revision)
    backend.save_schedule(every_minute(route="elsewhere"), NOW)
    seen.append(read(backend).revision)
    backend.fire_schedule(read(backend), [tick(NOW)], NOW + EVERY, NOW, fence)
    seen.append(read(backend).revision)
    backend.remove_schedule("beat")
    backend.save_schedule(every_minute(), NOW, expected_revision=0)
    seen.append(read(backend).revision)
    assert seen == [1, 2, 3, 4, 5]


# -- fire_due over the verb: the schedule's next_fire is the ledger of its ticks --------


def test_a_tick_advanced_past_is_never_fired_again_even_once_its_record_is_gone(backend):
    """A standby that read the schedule before the leader fired it, and leads once the
    tick's record has run, expired and been deleted, does not fire the tick again."""
    each_second = every_minute(result_ttl=1.0)
    backend.save_schedule(replace(each_second, spec={"every": 1.0, "misfire": "all"}), NOW)
    stale = backend.schedules()  # read before the leader fires
    leader = lead(backend, NOW, owner="leader", ttl=2)
    fired = fire_due(backend, backend.schedules(), NOW, leader)
    assert (fired.ticks, fired.stale) == (1, False)
    first = tick_job_id(backend.queue, "tests.beat", NOW)
    [taken] = backend.claim(["beats"], "w", NOW, lease=30)
    assert taken.id == first
    backend.finish([Outcome(first, "complete", result="1")], "w", NOW)  # expires at once

    later = NOW + 3
    successor = lead(backend, later, owner="successor", ttl=10)
    backend.sweep(later, successor)  # deletes the expired record
    assert backend.get(first, later) is None
    assert fire_due(backend, stale, later, successor).stale is True
    assert backend.get(first, later) is None, "the tick was fired twice"

    fired = fire_due(backend, backend.schedules(), later, successor)
    assert fired.ticks == 3  # NOW + 1 .. NOW + 3, and not NOW
    assert sorted(r.eta for r in backend.list_jobs(later, limit=10)) == [
        NOW + 1,
        NOW + 2,
        NOW + 3,
    ]
    assert read(backend).next_fire == later + 1
