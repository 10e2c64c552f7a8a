"""Concurrency limits (``JobRecord.concurrency``, ``rules.gate_open``), decided by the
store at claim time: at most n jobs of an event run at once, whoever claims them."""

from __future__ import annotations

import pytest

from skunkqueue.model import Outcome
from skunkqueue.persistence.base import ScheduleRecord
from skunkqueue.persistence.rules import MAX_BATCH

from .metering import claim_cost
from .support import T0, ids, job, lead

LIMITED = "tests.limited"


def gated(job_id: str, limit: int = 2, **fields) -> object:
    fields.setdefault("event", LIMITED)
    return job(job_id, concurrency=limit, **fields)


def in_order(n: int, prefix: str = "g", limit: int = 2, **fields) -> list:
    """n jobs of the limited event, leaving in the order of their numbers."""
    return [gated(f"{prefix}{i}", limit, eta=T0 - 1000 + i, **fields) for i in range(n)]


def running_of(backend, event: str = LIMITED) -> int:
    return sum(
        1 for r in backend.list_jobs(T0 + 100, state="running", limit=500) if r.event == event
    )


def test_the_limit_holds_within_one_batch_and_the_rest_stay_queued(backend):
    backend.put(in_order(5), T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10)) == ["g0", "g1"]
    assert backend.claim(["default"], "w", T0, lease=30, limit=10) == []
    stats = backend.stats(T0)
    assert stats.counts[("queued", "default")] == 3
    assert stats.counts[("running", "default")] == 2
    held = backend.get("g2", T0)
    assert (held.state, held.concurrency, held.owner) == ("queued", 2, None)
    assert ids(backend.list_jobs(T0, state="queued")) == ["g2", "g3", "g4"]


def test_the_limit_holds_across_claimers(store, backend):
    other = store.open()
    backend.put(in_order(4), T0)
    assert ids(backend.claim(["default"], "w1", T0, lease=30)) == ["g0"]
    assert ids(other.claim(["default"], "w2", T0, lease=30)) == ["g1"]
    assert backend.claim(["default"], "w3", T0, lease=30, limit=5) == []
    assert other.claim(["default"], "w4", T0, lease=30, limit=5) == []
    assert running_of(backend) == 2


def test_a_held_back_job_blocks_nothing_behind_it(backend):
    backend.put(
        [
            *in_order(3, limit=1),
            job("free-same-route", eta=T0 - 50),
            job("free-other-route", route="other", eta=T0 - 40),
            job("other-event", event="tests.other", concurrency=1, eta=T0 - 30),
        ],
        T0,
    )
    taken = backend.claim(["default", "other"], "w", T0, lease=30, limit=10)
    assert ids(taken) == ["g0", "free-same-route", "free-other-route", "other-event"]


def test_the_count_spans_routes_and_counts_jobs_without_a_limit(backend):
    backend.put([job("plain", event=LIMITED, route="a", eta=T0 - 10)], T0)
    assert ids(backend.claim(["a"], "w", T0, lease=30)) == ["plain"]
    backend.put([gated("b1", 2, route="b"), gated("c1", 2, route="c", eta=T0 + 0.5)], T0 + 1)
    assert ids(backend.claim(["b"], "w", T0 + 1, lease=30)) == ["b1"]
    # Two of the event run now, one of them without a limit of its own, on another route.
    assert backend.claim(["c"], "w", T0 + 1, lease=30, limit=5) == []
    assert backend.finish([Outcome("plain", "complete")], "w", T0 + 2) == [True]
    assert ids(backend.claim(["c"], "w", T0 + 2, lease=30)) == ["c1"]


def test_different_limits_each_count_every_running_job_of_the_event(backend):
    backend.put([gated("one", 1, eta=T0 - 2), gated("three", 3, eta=T0 - 1)], T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=5)) == ["one", "three"]
    backend.put([gated("one-more", 1), gated("three-more", 3, eta=T0 + 0.5)], T0 + 1)
    assert ids(backend.claim(["default"], "w", T0 + 1, lease=30, limit=5)) == ["three-more"]


def _with_one_running_and_two_held(backend, now: float = T0) -> None:
    backend.put(in_order(3, limit=1), now)
    assert ids(backend.claim(["default"], "w", now, lease=30, limit=5)) == ["g0"]


def test_finish_lets_the_next_held_back_job_through_in_order(backend):
    _with_one_running_and_two_held(backend)
    assert backend.finish([Outcome("g0", "complete")], "w", T0 + 1) == [True]
    assert ids(backend.claim(["default"], "w", T0 + 1, lease=30, limit=5)) == ["g1"]
    assert backend.finish([Outcome("g1", "error", error={"m": "x"})], "w", T0 + 2) == [True]
    assert ids(backend.claim(["default"], "w", T0 + 2, lease=30, limit=5)) == ["g2"]
    assert backend.claim(["default"], "w", T0 + 2, lease=30, limit=5) == []


@pytest.mark.parametrize("outcome", ["retrying", "queued"])
def test_an_outcome_that_requeues_frees_the_slot_too(backend, outcome):
    _with_one_running_and_two_held(backend)
    eta = T0 + 50 if outcome == "retrying" else None
    assert backend.finish([Outcome("g0", outcome, eta=eta)], "w", T0 + 1) == [True]
    expected = ["g0"] if outcome == "queued" else ["g1"]  # handed back unrun: first again
    assert ids(backend.claim(["default"], "w", T0 + 1, lease=30, limit=5)) == expected


def test_release_of_a_dead_worker_lets_held_back_jobs_through(backend):
    _with_one_running_and_two_held(backend)
    assert backend.release("w", T0 + 1, started=["g0"]) == {"g0": "queued"}
    # g0 lost a delivery and is queued again, first in order: it takes the slot.
    assert ids(backend.claim(["default"], "w2", T0 + 1, lease=30, limit=5)) == ["g0"]
    assert backend.finish([Outcome("g0", "complete")], "w2", T0 + 2) == [True]
    assert ids(backend.claim(["default"], "w2", T0 + 2, lease=30, limit=5)) == ["g1"]


def test_sweep_recovery_and_lost_deliveries_let_held_back_jobs_through(backend):
    backend.put([gated("lost", 1, eta=T0 - 2000, max_deliveries=1), *in_order(2, limit=1)], T0)
    assert ids(backend.claim(["default"], "w", T0, lease=5, limit=5)) == ["lost"]
    fence = lead(backend, T0 + 10)
    report = backend.sweep(T0 + 10, fence)
    assert report.failed == 1
    assert backend.get("lost", T0 + 10).state == "error"
    assert ids(backend.claim(["default"], "w", T0 + 10, lease=5, limit=5)) == ["g0"]
    report = backend.sweep(T0 + 20, lead(backend, T0 + 20))
    assert report.recovered == 1
    assert ids(backend.claim(["default"], "w", T0 + 20, lease=5, limit=5)) == ["g0"]
    assert backend.finish([Outcome("g0", "complete")], "w", T0 + 21) == [True]
    assert ids(backend.claim(["default"], "w", T0 + 21, lease=5, limit=5)) == ["g1"]


def test_cancel_of_a_held_back_job_leaves_nothing_behind(backend):
    _with_one_running_and_two_held(backend)
    assert backend.cancel(["g1"], T0 + 1, "not wanted") == [True]
    assert backend.get("g1", T0 + 1).state == "cancelled"
    assert backend.stats(T0 + 1).counts[("queued", "default")] == 1
    assert backend.finish([Outcome("g0", "complete")], "w", T0 + 2) == [True]
    assert ids(backend.claim(["default"], "w", T0 + 2, lease=30, limit=5)) == ["g2"]


def test_cancel_of_a_job_let_through_lets_the_next_one_through(backend):
    _with_one_running_and_two_held(backend)
    assert backend.finish([Outcome("g0", "complete")], "w", T0 + 1) == [True]
    # g1 was let through and is cancelled before any claim takes it: the slot it was
    # given passes to g2.
    assert backend.cancel(["g1"], T0 + 1, "not wanted") == [True]
    assert ids(backend.claim(["default"], "w", T0 + 1, lease=30, limit=5)) == ["g2"]


def test_a_limit_carried_by_a_schedules_template_holds(backend):
    now = T0
    fence = lead(backend, now)
    schedule = ScheduleRecord("tick", {"every": 1.0}, {"event": LIMITED}, next_fire=now)
    assert backend.save_schedule(schedule, now)
    read = backend.schedules()[0]
    ticks = [gated(f"tick-{i}", 1, eta=now - 3 + i) for i in range(3)]
    assert backend.fire_schedule(read, ticks, now + 1, now, fence)
    assert ids(backend.claim(["default"], "w", now, lease=30, limit=5)) == ["tick-0"]
    assert backend.get("tick-1", now).concurrency == 1


def test_one_claim_holds_back_at_most_max_batch(backend):
    backend.put(in_order(MAX_BATCH + 5, limit=1) + [job("free", eta=T0)], T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=5)) == ["g0"]
    # The first claim held back MAX_BATCH jobs and stopped; the next one goes on.
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=5)) == ["free"]


def test_claim_cost_does_not_grow_with_the_jobs_held_back(store, backend):
    """Hundreds of held-back jobs in front of other work cost a claim what 5 do: the store
    reads the same (counted as each backend can count it: SQLite's virtual machine
    steps, Redis commands, FoundationDB keys read, MongoDB documents read)."""

    def hold_back(event: str, n: int, route: str) -> None:
        backend.put([job(f"{event}-run", event=event, concurrency=1, route=route)], T0)
        backend.put(
            [job(f"{event}-{i}", event=event, concurrency=1, route=route) for i in range(n)], T0
        )
        taken = backend.claim([route], "w", T0, lease=600, limit=1)
        assert ids(taken) == [f"{event}-run"]
        for _ in range(n // MAX_BATCH + 1):  # each claim holds back up to MAX_BATCH
            assert backend.claim([route], "w", T0, lease=600, limit=1) == []

    def cost_of_a_claim_behind(tag: str) -> int:
        backend.put([job(f"free-{tag}", route="r")], T0)
        with claim_cost(store.spec.id, backend) as cost:
            assert ids(backend.claim(["r"], "w", T0, lease=600)) == [f"free-{tag}"]
        return cost.count

    hold_back("few", 5, "r")
    few = cost_of_a_claim_behind("few")
    # As many as the contention tests use, halved (the MongoDB stand-in is slow: 60).
    hold_back("many", store.spec.contention_jobs // 2, "r")
    many = cost_of_a_claim_behind("many")
    assert few > 0
    assert many <= few * 1.25 + 10, (few, many)


def test_cancel_of_a_running_job_frees_its_slot_and_lets_the_next_one_through(backend):
    """``cancel_other`` stops a run this way: the next run of the event must not wait for
    the stopped one's lease."""
    _with_one_running_and_two_held(backend)
    assert backend.cancel(["g0"], T0 + 1, "superseded", running=True) == [True]
    assert ids(backend.claim(["default"], "w", T0 + 1, lease=30, limit=5)) == ["g1"]
    assert running_of(backend) == 1
    # The stopped job's holder learns nothing else: its outcome is refused.
    assert backend.finish([Outcome("g0", "complete")], "w", T0 + 2) == [False]
    assert ids(backend.claim(["default"], "w", T0 + 2, lease=30, limit=5)) == []
