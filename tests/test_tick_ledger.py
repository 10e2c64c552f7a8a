"""Each cron tick is delivered exactly once: the scheduler fires a tick and moves its
schedule past it in one step (``Backend.fire_schedule``), so neither a leader that dies
around that step, nor a redeploy racing the leader, nor a long catch-up fires a tick
twice or skips one. In one process, on memory and SQLite, with the clock passed in.

The crash tests fail on the code before this change, which stored a tick's jobs
(``put``) and then saved the advanced schedule: a leader that died in between left the
tick to its successor, which fired it again once its job record had expired.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.errors import BackendUnavailable, SkunkQueueError
from skunkqueue.jobs import JobRecord, Outcome
from skunkqueue.persistence import Backend, ScheduleRecord, rules
from skunkqueue.persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX, Fence
from skunkqueue.scheduler import Scheduler
from skunkqueue.scheduler.ticks import tick_job_id

TTL = 3.0  # the leader's lease


class LeaderDied(Exception):
    """The leader's process ends here, as a SIGKILL would end it: it never steps again."""


def carries_ticks(args: Sequence[Any]) -> bool:
    """Whether a backend call stores tick jobs (``put`` or ``fire_schedule``, whichever
    the scheduler sends them with)."""
    return any(
        isinstance(arg, list) and any(isinstance(j, JobRecord) and j.schedule for j in arg)
        for arg in args
    )


class Watched:
    """A backend whose calls pass through, after ``before(name, args)`` and before
    ``after(name, args)``."""

    def __init__(
        self,
        inner: Backend,
        before: Callable[[str, tuple[Any, ...]], None] = lambda name, args: None,
        after: Callable[[str, tuple[Any, ...]], None] = lambda name, args: None,
    ) -> None:
        self._inner, self._before, self._after = inner, before, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if not callable(real) or name.startswith("_"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self._before(name, args)
            result = real(*args, **kwargs)
            self._after(name, args)
            return result

        return call


def dies_around_the_tick_step(backend: Backend, when: str) -> Watched:
    """``backend``, for a leader that dies just before, or just after, the first call
    that stores tick jobs."""

    def die(name: str, args: tuple[Any, ...]) -> None:
        if carries_ticks(args):
            raise LeaderDied(f"{when} {name}")

    if when == "before":
        return Watched(backend, before=die)
    return Watched(backend, after=die)


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, result_ttl=1, leader_ttl=TTL)
    yield q
    q.close()


def every_second(queue: SkunkQueue, **options: Any) -> Any:
    @queue.event(routes=["tick"], every=1, misfire="all", **options)
    def beat() -> None:
        return None

    return beat


def scheduler(queue: SkunkQueue) -> Scheduler:
    return Scheduler(queue.name, url=queue.config.url, leader_ttl=TTL)


def deliver(backend: Backend, now: float, delivered: Counter[str]) -> None:
    """A worker: take every queued job, run it, and store its outcome (kept result_ttl = 1 s)."""
    while taken := backend.claim(["tick"], "worker", now, lease=30, limit=rules.MAX_BATCH):
        delivered.update(job.id for job in taken)
        backend.finish([Outcome(job.id, "complete", result="null") for job in taken], "worker", now)


@pytest.mark.parametrize("when", ["after", "before"])
def test_each_tick_is_delivered_once_when_the_leader_dies_around_its_step(
    queue: SkunkQueue, when: str
) -> None:
    beat = every_second(queue)
    [schedule] = queue.backend.schedules()
    first = schedule.next_fire
    dying, successor = scheduler(queue), scheduler(queue)
    dying.backend = dies_around_the_tick_step(dying.backend, when)  # type: ignore[assignment]
    delivered: Counter[str] = Counter()
    try:
        dying.step(first - 0.5)
        assert dying.leading
        with pytest.raises(LeaderDied):
            dying.step(first)
        # The dead leader's lease runs out TTL after its last renewal; meanwhile the tick
        # it fired (or not) runs, and its record expires one second after it finished.
        now = first
        while now < first + TTL + 4:
            deliver(queue.backend, now, delivered)
            successor.step(now)
            now += 0.25
        deliver(queue.backend, now, delivered)
        assert successor.leading
    finally:
        successor.election.resign()
        for each in (dying, successor):
            each.backend.close()

    last = queue.backend.schedules()[0].next_fire - 1
    expected = [tick_job_id(queue.name, beat.name, first + i) for i in range(int(last - first) + 1)]
    assert len(expected) >= TTL + 3
    assert delivered == Counter(expected), "a tick was delivered twice, or never"


def test_registering_a_schedule_never_undoes_the_leaders_advance(url: str) -> None:
    """A redeploy with a new template (same expression) keeps the stored next_fire. The
    leader advancing the schedule between the registration's read and its write must not
    be undone, or the ticks it fired would be fired again."""
    name = f"q{uuid.uuid4().hex[:10]}"
    first = SkunkQueue(name, url=url)
    leader_backend = first.backend

    @first.event(routes=["old"], every=60)
    def beat() -> None:
        return None

    [read] = leader_backend.schedules()
    lease = leader_backend.acquire_lease(SCHEDULER_LEASE, "leader", read.next_fire, ttl=30)
    fence = Fence(lease.name, lease.owner, lease.token)
    advanced = []

    def the_leader_fires(name: str, args: tuple[Any, ...]) -> None:
        if name == "schedules" and not advanced:
            job = JobRecord(
                id="tick", event=beat.name, route="old", payload="{}", schedule=beat.name
            )
            fired = leader_backend.fire_schedule(
                read, [job], read.next_fire + 60, read.next_fire, fence
            )
            advanced.append(fired)

    second = SkunkQueue(name, url=url)
    second._backend = Watched(second.backend, after=the_leader_fires)  # type: ignore[assignment]
    try:

        @second.event(routes=["new"], every=60)
        def beat() -> None:  # noqa: F811 - the same event, redeployed with another route
            return None

        assert advanced == [True]
        [stored] = leader_backend.schedules()
        assert stored.template["route"] == "new"
        assert stored.next_fire == read.next_fire + 60, "registration undid the leader's advance"
        assert stored.revision == read.revision + 2
    finally:
        first.close()
        second.close()


def test_registering_gives_up_with_a_clear_error_on_a_schedule_that_keeps_changing(
    url: str,
) -> None:
    name = f"q{uuid.uuid4().hex[:10]}"
    first = SkunkQueue(name, url=url)

    @first.event(routes=["old"], every=60)
    def beat() -> None:
        return None

    [stored] = first.backend.schedules()

    def someone_writes(name: str, args: tuple[Any, ...]) -> None:
        if name == "schedules":
            first.backend.save_schedule(stored, stored.updated_at)

    second = SkunkQueue(name, url=url)
    second._backend = Watched(second.backend, after=someone_writes)  # type: ignore[assignment]
    try:
        with pytest.raises(SkunkQueueError, match="changed under each of 5 attempts"):

            @second.event(routes=["new"], every=60)
            def beat() -> None:  # noqa: F811 - the same event, redeployed with another route
                return None

        [after] = first.backend.schedules()
        assert after.template["route"] == "old" and after.revision == stored.revision + 5
    finally:
        first.close()
        second.close()


def test_a_leader_whose_schedule_changed_under_it_reads_it_again_at_once(
    queue: SkunkQueue,
) -> None:
    """A redeploy lands between the leader's read and its step: the step writes nothing,
    and the leader reads the schedules in the same turn, so it waits for the redeployed
    schedule's first tick instead of spinning on the stale one."""
    beat = every_second(queue)
    [schedule] = queue.backend.schedules()
    tick_at = schedule.next_fire
    redeployed = ScheduleRecord(
        schedule.name, {**schedule.spec, "every": 3600.0}, schedule.template, tick_at + 3600
    )
    leader = scheduler(queue)

    def redeploy_first(name: str, args: tuple[Any, ...]) -> None:
        if name == "fire_schedule":
            queue.backend.save_schedule(redeployed, tick_at)

    leader.backend = Watched(leader.backend, before=redeploy_first)  # type: ignore[assignment]
    try:
        wake = leader.step(tick_at)
        assert leader.leading
        assert queue.backend.get(tick_job_id(queue.name, beat.name, tick_at), tick_at) is None
        assert wake > tick_at, "the leader would turn again at once, on the schedule it read"
    finally:
        leader.election.resign()
        leader.backend.close()


def test_a_long_catch_up_is_fired_in_steps_of_at_most_max_batch_jobs(queue: SkunkQueue) -> None:
    beat = every_second(queue, max_catchup=600)
    [schedule] = queue.backend.schedules()
    first = schedule.next_fire
    now = first + 599  # 600 ticks are due
    steps: list[int] = []

    def count(name: str, args: tuple[Any, ...]) -> None:
        if name == "fire_schedule":
            steps.append(len(args[1]))

    leader = scheduler(queue)
    leader.backend = Watched(leader.backend, before=count)  # type: ignore[assignment]
    try:
        for _ in range(3):
            wake = leader.step(now)
            if len(steps) < 3:
                assert wake <= now, "the leader waits before firing the ticks still due"
    finally:
        leader.election.resign()
        leader.backend.close()
    assert steps == [rules.MAX_BATCH, rules.MAX_BATCH, 600 - 2 * rules.MAX_BATCH]
    stored = queue.backend.list_jobs(now, limit=1000)
    assert sorted(j.id for j in stored) == sorted(
        tick_job_id(queue.name, beat.name, first + i) for i in range(600)
    )
    assert queue.backend.schedules()[0].next_fire == now + 1


def test_a_broadcast_tick_with_more_copies_than_one_step_takes_is_fired_whole(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "MAX_BATCH", 3)
    queue = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, queue_type="broadcast")
    try:

        @queue.event(routes=["all"], every=60)
        def hello() -> None:
            return None

        [schedule] = queue.backend.schedules()
        tick_at = schedule.next_fire
        for worker in ("w1", "w2", "w3", "w4", "w5"):
            queue.backend.acquire_lease(
                WORKER_LEASE_PREFIX + worker, worker, tick_at, 60, {"routes": ["all"]}
            )
        leader = scheduler(queue)
        try:
            leader.step(tick_at)
        finally:
            leader.election.resign()
            leader.backend.close()
        tick = tick_job_id(queue.name, hello.name, tick_at)
        copies = sorted(j.id for j in queue.backend.list_jobs(tick_at, limit=100))
        assert copies == [f"{tick}@w{i}" for i in range(1, 6)]
        assert queue.backend.schedules()[0].next_fire == tick_at + 60
    finally:
        queue.close()


def test_a_store_outage_while_firing_a_broadcast_tick_breaks_no_schedule(url: str) -> None:
    """A broadcast tick reads the live workers from the store: when that read fails, the
    store is down, not the schedule: the turn fails (and is retried), nothing is marked
    broken, and the tick fires once the store answers."""
    queue = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url, queue_type="broadcast")
    try:

        @queue.event(routes=["all"], every=60)
        def hello() -> None:
            return None

        [schedule] = queue.backend.schedules()
        tick_at = schedule.next_fire
        queue.backend.acquire_lease(
            WORKER_LEASE_PREFIX + "w1", "w1", tick_at, 60, {"routes": ["all"]}
        )
        leader = scheduler(queue)
        real = leader.backend
        down = {"leases"}

        def outage(name: str, args: tuple[Any, ...]) -> None:
            if name in down and args and args[0] == WORKER_LEASE_PREFIX:
                raise BackendUnavailable("the store is down")

        leader.backend = Watched(real, before=outage)  # type: ignore[assignment]
        try:
            with pytest.raises(BackendUnavailable):
                leader.step(tick_at)
            assert leader.broken == {}
            down.clear()
            leader.step(tick_at)
        finally:
            leader.election.resign()
            real.close()
        tick = tick_job_id(queue.name, hello.name, tick_at)
        assert [j.id for j in queue.backend.list_jobs(tick_at)] == [f"{tick}@w1"]
    finally:
        queue.close()
