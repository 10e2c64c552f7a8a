"""Operating a schedule in one process: pause and resume, run now, backfill, jitter and
the listing, with the leader's steps (``fire_due``) driven by hand on a clock passed in.
On memory and SQLite; the contract suite checks the state and its compare-and-set on
every backend, and tests/e2e/test_schedule_ops.py does this with real processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.cron import ScheduleSpec
from skunkqueue.errors import ConfigurationError, UnknownSchedule
from skunkqueue.persistence.base import SCHEDULER_LEASE, Fence
from skunkqueue.schedule_ops import stored_state
from skunkqueue.scheduler.ticks import fire_due, tick_job_id

MINUTE = 60.0


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:8]}", url=url)
    yield q
    q.close()


def beat(queue: SkunkQueue, **options: object) -> str:
    @queue.event(routes=["beats"], name="tasks.beat", every=MINUTE, **options)
    def report() -> None:
        return None

    return "tasks.beat"


class Leader:
    """The leader's steps at instants the test chooses."""

    def __init__(self, queue: SkunkQueue) -> None:
        self.backend = queue.backend
        self.first = self.backend.schedules()[0].next_fire  # the first tick
        lease = self.backend.acquire_lease(SCHEDULER_LEASE, "leader", self.first, 10 * 86400)
        assert lease is not None
        self.fence = Fence(lease.name, lease.owner, lease.token)

    def step(self, at: float) -> int:
        """One turn at ``at``, the way the scheduler takes it: read, fire, and again if a
        change beat the write; returns the jobs stored."""
        fired = fire_due(self.backend, self.backend.schedules(), at, self.fence)
        jobs = fired.jobs
        if fired.stale:
            jobs += fire_due(self.backend, self.backend.schedules(), at, self.fence).jobs
        return jobs

    def ticks(self, *minutes: int) -> None:
        for minute in minutes:
            self.step(self.first + minute * MINUTE)

    def tick_id(self, minute: int) -> str:
        return tick_job_id(self.backend.queue, "tasks.beat", self.first + minute * MINUTE)


def stored_ids(queue: SkunkQueue) -> set[str]:
    return {j.id for j in queue.jobs(limit=1000)}


def utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, timezone.utc)


def test_a_paused_schedule_skips_its_ticks_and_logs_them_as_one_entry(queue):
    name = beat(queue)
    leader = Leader(queue)
    leader.ticks(0)
    assert queue.pause_schedule(name, note="partner API down") is True
    assert queue.pause_schedule(name, note="partner API down") is False  # already paused
    leader.ticks(1, 2, 3)
    assert stored_ids(queue) == {leader.tick_id(0)}
    [info] = queue.schedules()
    assert (info.paused, info.note) == (True, "partner API down")
    fired, skipped = info.last_ticks
    assert (fired.kind, fired.outcome, fired.job_ids) == ("cron", "queued", (leader.tick_id(0),))
    assert (skipped.outcome, skipped.reason, skipped.count) == ("skipped", "paused", 3)
    assert skipped.until == utc(leader.first + 3 * MINUTE)
    # A long pause is one range of never-run time, next to the one before the schedule.
    gaps = queue.backend.schedules()[0].state["gaps"]
    assert gaps == [[0.0, leader.first], [leader.first + MINUTE, leader.first + 4 * MINUTE]]

    assert queue.resume_schedule(name) is True
    assert queue.resume_schedule(name) is False
    leader.ticks(4)
    assert stored_ids(queue) == {leader.tick_id(0), leader.tick_id(4)}  # 1-3 not fired


def test_a_pause_that_lands_after_the_leaders_read_wins(queue):
    name = beat(queue)
    leader = Leader(queue)
    read = leader.backend.schedules()  # the leader reads, then the operator pauses
    queue.pause_schedule(name)
    fired = fire_due(leader.backend, read, leader.first, leader.fence)
    assert (fired.stale, fired.jobs) == (True, 0)
    fire_due(leader.backend, leader.backend.schedules(), leader.first, leader.fence)
    assert stored_ids(queue) == set()
    assert queue.schedules()[0].last_ticks[-1].reason == "paused"


def test_a_redeploy_keeps_a_pause(queue, url):
    name = beat(queue)
    queue.pause_schedule(name, note="hold")
    again = SkunkQueue(queue.name, url=url)
    if not again.backend.shared_across_processes:
        again = queue
    beat(again, jitter=5)  # a new spec
    [info] = again.schedules()
    assert (info.paused, info.note, info.jitter) == (True, "hold", 5.0)


def test_a_trigger_runs_once_now_and_also_while_paused(queue):
    name = beat(queue)
    leader = Leader(queue)
    queue.pause_schedule(name)
    first, second = queue.trigger_schedule(name), queue.trigger_schedule(name)
    assert first != second and "~trigger" in first
    assert first not in {leader.tick_id(m) for m in range(3)}
    leader.step(leader.first - 1)  # no tick due: the requests alone are fired
    leader.step(leader.first - 1)
    assert stored_ids(queue) == {first, second}
    assert all(j.state == "queued" for j in queue.jobs())
    [info] = queue.schedules()
    assert [(t.kind, t.outcome) for t in info.last_ticks] == [("trigger", "queued")] * 2
    assert info.pending_triggers == 0


def test_backfill_runs_each_never_run_tick_once(queue):
    name = beat(queue, misfire="coalesce")
    leader = Leader(queue)
    leader.ticks(0)
    queue.pause_schedule(name)
    leader.ticks(1, 2)
    queue.resume_schedule(name)
    leader.ticks(3, 6)  # 4 and 5 missed: coalesced into 6
    ran = {leader.tick_id(m) for m in (0, 3, 6)}
    assert stored_ids(queue) == ran
    assert queue.schedules()[0].last_ticks[-1].missed == 2

    start, end = utc(leader.first - 2 * MINUTE), utc(leader.first + 7 * MINUTE)
    # -2, -1: before the schedule existed; 1, 2: paused; 4, 5: coalesced. 7 is not due.
    assert queue.backfill(name, start, end) == 6
    assert queue.backfill(name, start, end) == 0  # requested already
    leader.step(leader.first + 6 * MINUTE + 1)
    never_ran = {leader.tick_id(m) for m in (-2, -1, 1, 2, 4, 5)}
    assert stored_ids(queue) == ran | never_ran
    etas = {j.id: j.eta for j in queue.jobs(limit=100)}
    assert all(etas[leader.tick_id(m)] == leader.first + m * MINUTE for m in (-2, 1, 5))
    assert queue.backfill(name, start, end) == 0  # ran already
    assert leader.step(leader.first + 6 * MINUTE + 2) == 0
    assert queue.schedules()[0].pending_backfill == []


def test_a_long_backfill_is_fired_in_steps_of_max_batch(queue):
    name = beat(queue)
    leader = Leader(queue)
    start = utc(leader.first - 600 * MINUTE)
    assert queue.backfill(name, start, utc(leader.first)) == 600
    assert [leader.step(leader.first - 1) for _ in range(4)] == [250, 250, 100, 0]
    assert len(stored_ids(queue)) == 600


@pytest.mark.parametrize(
    "start, end, error, message",
    [
        (datetime(2026, 1, 1), datetime(2026, 1, 2), ValueError, "has no time zone"),
        (utc(2e9), utc(1e9), ValueError, "start < end"),
        (utc(1e9), utc(1e9 + 100_001 * MINUTE), ValueError, "more than 100000 ticks"),
        ("2026-01-01", utc(1e9), TypeError, "must be a datetime"),
    ],
)
def test_a_bad_backfill_range_is_refused_and_nothing_is_written(queue, start, end, error, message):
    name = beat(queue)
    before = queue.backend.schedules()
    with pytest.raises(error, match=message):
        queue.backfill(name, start, end)
    assert queue.backend.schedules() == before


@pytest.mark.parametrize(
    "verb", ["pause_schedule", "resume_schedule", "trigger_schedule", "backfill"]
)
def test_an_unknown_schedule_is_a_clear_error(queue, verb):
    beat(queue)
    args = (utc(1e9), utc(1e9 + 60)) if verb == "backfill" else ()
    with pytest.raises(UnknownSchedule, match="no schedule named 'tasks.nope'.*tasks.beat"):
        getattr(queue, verb)("tasks.nope", *args)


def test_jitter_delays_each_tick_by_a_fixed_amount_under_its_nominal_id(queue):
    beat(queue, jitter=timedelta(seconds=30))
    leader = Leader(queue)
    leader.ticks(0, 1, 2)
    etas = {j.id: j.eta for j in queue.jobs()}
    delays = [etas[leader.tick_id(m)] - (leader.first + m * MINUTE) for m in range(3)]
    assert all(0 <= d < 30 for d in delays) and len(set(delays)) == 3
    # Another leader computes the same: the delay is a hash of (schedule, tick).
    spec = ScheduleSpec.from_dict(queue.backend.schedules()[0].spec)
    assert delays[1] == pytest.approx(spec.delay("tasks.beat", leader.first + MINUTE))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"every": 60, "jitter": 60}, "shorter than the time between two ticks"),
        ({"cron": "*/5 * * * *", "jitter": timedelta(minutes=5)}, "between two ticks .300 s"),
        ({"every": 60, "jitter": 0}, "jitter must be a positive"),
        ({"every": 60, "jitter": float("nan")}, "jitter must be a positive"),
        ({"jitter": 5}, "give cron= or every="),
    ],
)
def test_bad_jitter_is_refused_at_decoration(queue, options, message):
    with pytest.raises(ConfigurationError, match=message):
        queue.event(routes=["x"], **options)(lambda: None)
    assert queue.backend.schedules() == []


def test_the_listing_shows_the_timetable_and_lateness(queue):
    name = beat(queue)
    leader = Leader(queue)
    leader.ticks(0)
    [job] = queue.backend.claim(["beats"], "w", leader.first + 2.5, 30)
    [info] = queue.schedules()
    assert (info.name, info.expression, info.timezone, info.route) == (
        name,
        "every 60 s",
        "UTC",
        "beats",
    )
    assert info.next_fires == [utc(leader.first + m * MINUTE) for m in range(1, 6)]
    [tick] = info.last_ticks
    assert (tick.outcome, tick.lateness) == ("running", pytest.approx(2.5))


class LeaderDied(Exception):
    """The leader's process ends here, as a SIGKILL would end it."""


class DiesAroundItsStep:
    """A backend whose first ``fire_schedule`` kills its leader just before, or just after,
    the step is written."""

    def __init__(self, inner: object, when: str) -> None:
        self._inner, self._when = inner, when

    def __getattr__(self, name: str) -> object:
        real = getattr(self._inner, name)
        if name != "fire_schedule":
            return real

        def step(*args: object, **kwargs: object) -> object:
            if self._when == "before":
                raise LeaderDied
            real(*args, **kwargs)
            raise LeaderDied

        return step


@pytest.mark.parametrize("when", ["before", "after"])
def test_requests_run_once_whenever_their_leader_dies(queue, when):
    name = beat(queue)
    leader = Leader(queue)
    run = queue.trigger_schedule(name)
    assert queue.backfill(name, utc(leader.first - 3 * MINUTE), utc(leader.first)) == 3
    at = leader.first - 1
    with pytest.raises(LeaderDied):
        dying = DiesAroundItsStep(leader.backend, when)
        fire_due(dying, leader.backend.schedules(), at, leader.fence)  # type: ignore[arg-type]

    later = leader.first + 11 * 86400  # the dead leader's lease has lapsed
    lease = leader.backend.acquire_lease(SCHEDULER_LEASE, "successor", later, 60)
    successor = Fence(lease.name, lease.owner, lease.token)
    fired = fire_due(leader.backend, leader.backend.schedules(), at, successor)
    assert fired.jobs == (4 if when == "before" else 0), "a request fired twice, or never"
    assert stored_ids(queue) == {run} | {leader.tick_id(m) for m in (-3, -2, -1)}


def test_a_new_expression_leaves_the_ticks_it_passes_over_to_backfill(queue):
    beat(queue)
    leader = Leader(queue)
    leader.ticks(0)
    [before] = queue.backend.schedules()
    assert queue.schedules()[0].created is not None
    # The leader is down for ten minutes, then a redeploy changes the interval.
    later = leader.first + 10 * MINUTE + 30
    state = stored_state(before, later + 30, later)
    assert state["gaps"][-1] == [leader.first + MINUTE, later + 30]
    state = stored_state(before, before.next_fire, later)  # same timetable: nothing new
    assert state["gaps"] == before.state["gaps"]


@pytest.mark.parametrize(
    "note, error", [(7, TypeError), ("x" * 1001, ValueError)], ids=["not text", "too long"]
)
def test_a_bad_note_is_refused_and_nothing_is_written(queue, note, error):
    name = beat(queue)
    before = queue.backend.schedules()
    with pytest.raises(error, match="note"):
        queue.pause_schedule(name, note=note)
    assert queue.backend.schedules() == before
