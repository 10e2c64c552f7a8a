"""Overlap policies in one process: a schedule's ticks while an earlier run is unfinished,
with the leader's steps and a worker's claims and outcomes driven by hand on a clock
passed in. On memory and SQLite; tests/e2e/test_overlap.py runs them with real worker and
scheduler processes and a leader killed mid-run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.errors import ConfigurationError
from skunkqueue.model import Outcome
from skunkqueue.scheduler import overlap
from skunkqueue.scheduler.ticks import fire_due

from .test_schedule_ops import MINUTE, Leader

WORKER = "w"


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:8]}", url=url)
    yield q
    q.close()


def beat(queue: SkunkQueue, policy: str, **options: object) -> str:
    @queue.event(routes=["beats"], name="tasks.beat", every=MINUTE, overlap=policy, **options)
    def report() -> None:
        return None

    return "tasks.beat"


def claim(leader: Leader, at: float) -> list[str]:
    return [j.id for j in leader.backend.claim(["beats"], WORKER, at, lease=3600, limit=10)]


def finish(leader: Leader, job_id: str, at: float) -> None:
    assert leader.backend.finish([Outcome(job_id, "complete")], WORKER, at) == [True]


def state_of(leader: Leader, minute: int, at: float) -> str | None:
    record = leader.backend.get(leader.tick_id(minute), at)
    return None if record is None else record.state


def last_log(queue: SkunkQueue) -> list[dict]:
    return queue.backend.schedules()[0].state["log"]


def test_judge_follows_each_policy():
    assert overlap.judge("allow", ["a", "b"]).fire
    assert overlap.judge("buffer_all", ["a", "b"]).fire
    assert overlap.judge("skip", []).fire
    assert not overlap.judge("skip", ["a"]).fire
    assert overlap.judge("buffer_one", ["a"]).fire
    assert not overlap.judge("buffer_one", ["a", "b"]).fire
    assert overlap.judge("cancel_other", ["a", "b"]) == overlap.Verdict(True, cancel=("a", "b"))
    with pytest.raises(ValueError, match="unknown overlap policy"):
        overlap.judge("sometimes", [])


def test_skip_skips_ticks_while_a_run_is_unfinished_and_logs_why(queue):
    beat(queue, "skip")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    leader.ticks(1, 2)  # the first run is still running
    assert state_of(leader, 1, t0 + 121) is None and state_of(leader, 2, t0 + 121) is None
    info = queue.schedules()[0]
    assert (info.overlap, info.concurrency) == ("skip", 1)
    assert info.unfinished_runs == [leader.tick_id(0)]
    skipped = [e for e in last_log(queue) if e["outcome"] == "skipped"]
    assert skipped and leader.tick_id(0) in skipped[-1]["reason"]
    assert skipped[-1]["reason"].startswith("overlap=skip")
    finish(leader, leader.tick_id(0), t0 + 150)
    leader.ticks(3)
    assert state_of(leader, 3, t0 + 181) == "queued"
    assert queue.schedules()[0].unfinished_runs == [leader.tick_id(3)]


def test_buffer_one_keeps_one_run_waiting_behind_the_running_one(queue):
    beat(queue, "buffer_one")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    leader.ticks(1, 2)
    assert state_of(leader, 1, t0 + 121) == "queued"  # buffered
    assert state_of(leader, 2, t0 + 121) is None  # one waits already: skipped
    # The store keeps the buffered run from starting beside the running one.
    assert claim(leader, t0 + 122) == []
    finish(leader, leader.tick_id(0), t0 + 130)
    assert claim(leader, t0 + 131) == [leader.tick_id(1)]


def test_buffer_all_runs_every_tick_one_after_another(queue):
    beat(queue, "buffer_all")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    leader.ticks(1, 2)
    assert claim(leader, t0 + 121) == []
    for minute in (0, 1):
        finish(leader, leader.tick_id(minute), t0 + 130 + minute)
        assert claim(leader, t0 + 130 + minute) == [leader.tick_id(minute + 1)]


def test_cancel_other_stops_the_running_run_and_starts_the_new_one(queue):
    beat(queue, "cancel_other")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    leader.ticks(1)
    old = leader.backend.get(leader.tick_id(0), t0 + 61)
    assert old.state == "cancelled"
    assert "overlap=cancel_other" in old.error["reason"]
    assert leader.tick_id(1) in old.error["reason"]
    # Its worker's outcome is refused; the new run starts at once.
    assert leader.backend.finish([Outcome(old.id, "complete")], WORKER, t0 + 62) == [False]
    assert claim(leader, t0 + 62) == [leader.tick_id(1)]


def test_allow_lets_runs_overlap(queue):
    beat(queue, "allow")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    leader.ticks(1)
    assert claim(leader, t0 + 61) == [leader.tick_id(1)]


def test_a_new_leader_decides_as_the_old_one_would(queue):
    """The runs the policy looks at live in the stored state, not in a leader's memory."""
    beat(queue, "skip")
    first = Leader(queue)
    t0 = first.first
    first.ticks(0)
    assert claim(first, t0 + 1) == [first.tick_id(0)]
    successor = SkunkQueue(queue.name, url=queue.backend.url)
    try:
        backend = successor.backend
        lease = backend.acquire_lease("scheduler", "successor", t0 + 50, 3600)
        assert lease is None  # the first leader's lease holds; take it over once it lapses
        fence = first.fence  # the same lease, as a leader that took over would hold it
        fire_due(backend, backend.schedules(), t0 + MINUTE, fence)
        assert backend.get(first.tick_id(1), t0 + MINUTE + 1) is None
    finally:
        successor.close()


def test_a_trigger_obeys_the_policy(queue):
    name = beat(queue, "skip")
    leader = Leader(queue)
    t0 = leader.first
    leader.ticks(0)
    assert claim(leader, t0 + 1) == [leader.tick_id(0)]
    run = queue.trigger_schedule(name)
    leader.step(t0 + 10)
    assert leader.backend.get(run, t0 + 11) is None
    entry = last_log(queue)[-1]
    assert entry["kind"] == "trigger" and entry["outcome"] == "skipped"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap": "sometimes"}, "overlap='sometimes' is not one of"),
        ({"overlap": None}, "is not one of"),
        ({"overlap": "skip", "every": None}, "give cron= or every="),
    ],
)
def test_bad_overlap_options_are_refused_at_decoration(queue, options, message):
    with pytest.raises(ConfigurationError, match=message):

        @queue.event(routes=["beats"], **{"every": MINUTE, **options})
        def report() -> None:
            return None


def test_overlap_on_a_broadcast_queue_is_refused(url):
    q = SkunkQueue(f"q{uuid.uuid4().hex[:8]}", url=url, queue_type="broadcast")
    try:
        with pytest.raises(ConfigurationError, match="broadcast"):

            @q.event(routes=["beats"], every=MINUTE, overlap="skip")
            def report() -> None:
                return None
    finally:
        q.close()


def test_tick_jobs_of_a_serialising_policy_carry_a_limit_of_one(queue):
    beat(queue, "buffer_all", concurrency=5)
    leader = Leader(queue)
    leader.ticks(0)
    assert leader.backend.get(leader.tick_id(0), leader.first + 1).concurrency == 1
