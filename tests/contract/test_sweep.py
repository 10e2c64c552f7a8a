"""promote: the fenced leader step that moves due work, recovers lost leases and expires records."""

from __future__ import annotations

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.jobs import Outcome
from skunkqueue.persistence import Fence
from skunkqueue.persistence.base import SCHEDULER_LEASE

from .support import T0, ids, job, lead


def test_sweep_moves_due_scheduled_and_retrying_jobs(backend):
    backend.put(
        [
            job("s-due", eta=T0 + 10),
            job("s-later", eta=T0 + 30),
            job("r-due", eta=T0 + 5, state="retrying"),
            job("r-later", eta=T0 + 25, state="retrying"),
        ],
        now=T0,
    )
    report = backend.sweep(T0 + 10, lead(backend, T0 + 10))
    assert (report.promoted, report.recovered, report.failed, report.expired) == (2, 0, 0, 0)
    assert report.more is False
    assert report.next_due == T0 + 25
    states = {r.id: r.state for r in backend.list_jobs(T0 + 10)}
    assert states == {
        "s-due": "queued",
        "r-due": "queued",
        "s-later": "scheduled",
        "r-later": "retrying",
    }
    assert ids(backend.claim(["default"], "w", T0 + 10, lease=30, limit=5)) == ["r-due", "s-due"]


def test_sweep_with_nothing_due(backend):
    fence = lead(backend, T0)
    empty = backend.sweep(T0, fence)
    assert (empty.promoted, empty.recovered, empty.failed, empty.expired) == (0, 0, 0, 0)
    assert (empty.more, empty.next_due) == (False, None)
    backend.put([job("later", eta=T0 + 50)], now=T0)
    report = backend.sweep(T0 + 1, fence)
    assert (report.promoted, report.more, report.next_due) == (0, False, T0 + 50)
    assert backend.get("later", T0 + 1).state == "scheduled"


def test_next_due_includes_running_lease_expiry(backend):
    backend.put([job("run"), job("later", eta=T0 + 100)], now=T0)
    backend.claim(["default"], "w", T0, lease=40)
    assert backend.sweep(T0 + 1, lead(backend, T0 + 1)).next_due == T0 + 40
    backend.finish([Outcome("run", "complete")], "w", T0 + 2)
    assert backend.sweep(T0 + 2, lead(backend, T0 + 2)).next_due == T0 + 100


def test_sweep_recovers_running_jobs_whose_lease_lapsed(backend):
    backend.put([job("lost"), job("alive")], now=T0)
    backend.claim(["default"], "dead", T0, lease=10)
    backend.claim(["default"], "live", T0, lease=10)
    backend.renew("live", T0 + 9, lease=10)  # alive until T0 + 19
    fence = lead(backend, T0 + 11)
    report = backend.sweep(T0 + 11, fence)
    assert (report.promoted, report.recovered, report.failed) == (0, 1, 0)
    assert report.next_due == T0 + 19
    lost = backend.get("lost", T0 + 11)
    assert (lost.state, lost.owner, lost.lease_until, lost.deliveries, lost.attempts) == (
        "queued",
        None,
        None,
        1,
        0,
    )
    assert backend.get("alive", T0 + 11).state == "running"
    [again] = backend.claim(["default"], "w2", T0 + 12, lease=10)
    assert (again.id, again.deliveries, again.owner) == ("lost", 2, "w2")


def test_sweep_does_not_recover_a_lease_that_has_not_lapsed(backend):
    backend.put([job("a")], now=T0)
    backend.claim(["default"], "w", T0, lease=10)
    report = backend.sweep(T0 + 9.5, lead(backend, T0 + 9.5))
    assert (report.recovered, report.failed, report.next_due) == (0, 0, T0 + 10)
    assert backend.get("a", T0 + 9.5).owner == "w"


def test_max_deliveries_lost_turns_the_job_into_an_error(backend):
    backend.put([job("doomed", max_deliveries=3, result_ttl=100)], now=T0)
    fence = lead(backend, T0, ttl=1000)
    now = T0
    for delivery in (1, 2):
        [taken] = backend.claim(["default"], f"w{delivery}", now, lease=10)
        assert taken.deliveries == delivery
        now += 11
        report = backend.sweep(now, fence)
        assert (report.recovered, report.failed) == (1, 0)
    [taken] = backend.claim(["default"], "w3", now, lease=10)
    assert taken.deliveries == 3
    now += 11
    report = backend.sweep(now, fence)
    assert (report.recovered, report.failed) == (0, 1)
    failed = backend.get("doomed", now)
    assert (failed.state, failed.owner, failed.lease_until) == ("error", None, None)
    assert (failed.deliveries, failed.attempts) == (3, 0)
    assert (failed.finished_at, failed.expires_at) == (now, now + 100)
    reason = failed.error["reason"]
    assert reason.startswith("lost") and reason.endswith("deliveries"), reason
    assert "3" in failed.error["message"]
    assert backend.claim(["default"], "w4", now, lease=10) == []


def test_attempts_that_concluded_do_not_count_as_lost_deliveries(backend):
    backend.put([job("flaky", max_deliveries=2)], now=T0)
    fence = lead(backend, T0, ttl=1000)
    backend.claim(["default"], "w1", T0, lease=10)
    backend.finish([Outcome("flaky", "retrying", error={"m": "1"}, eta=T0 + 1)], "w1", T0 + 1)
    backend.sweep(T0 + 1, fence)
    backend.claim(["default"], "w2", T0 + 1, lease=10)  # deliveries 2, attempts 1
    report = backend.sweep(T0 + 12, fence)  # first lost delivery: under the limit
    assert (report.recovered, report.failed) == (1, 0)
    rec = backend.get("flaky", T0 + 12)
    assert (rec.state, rec.deliveries, rec.attempts) == ("queued", 2, 1)
    backend.claim(["default"], "w3", T0 + 12, lease=10)
    report = backend.sweep(T0 + 23, fence)  # second lost delivery: the limit
    assert (report.recovered, report.failed) == (0, 1)
    assert backend.get("flaky", T0 + 23).state == "error"


def test_sweep_deletes_expired_records(backend):
    backend.put([job("short", result_ttl=10), job("long", result_ttl=1000), job("open")], now=T0)
    backend.claim(["default"], "w", T0, lease=30, limit=2)
    backend.finish(
        [Outcome("short", "complete", result="1"), Outcome("long", "error", error={"m": "x"})],
        "w",
        T0,
    )
    fence = lead(backend, T0, ttl=1000)
    assert backend.sweep(T0 + 9, fence).expired == 0
    report = backend.sweep(T0 + 10, fence)
    assert report.expired == 1
    assert backend.get("short", T0) is None  # deleted, not merely hidden
    assert sorted(ids(backend.list_jobs(T0))) == ["long", "open"]
    assert backend.sweep(T0 + 11, fence).expired == 0


@pytest.mark.parametrize(
    "make_stale",
    ["wrong_token", "wrong_owner", "expired", "released", "taken_over", "never_taken"],
)
def test_stale_fence_raises_lease_lost_and_writes_nothing(backend, make_stale):
    backend.put([job("due", eta=T0 + 5), job("run"), job("old", result_ttl=1)], now=T0)
    backend.claim(["default"], "w", T0, lease=5, limit=2)  # "run" and "old" (eta order)
    backend.finish([Outcome("old", "complete")], "w", T0)
    backend.renew("w", T0, lease=5, job_ids=["run"])
    now = T0 + 10  # "due" is due, "run" lapsed, "old" expired

    lease = backend.acquire_lease(SCHEDULER_LEASE, "leader", T0, ttl=60)
    good = Fence(lease.name, lease.owner, lease.token)
    if make_stale == "wrong_token":
        fence = Fence(lease.name, lease.owner, lease.token + 1)
    elif make_stale == "wrong_owner":
        fence = Fence(lease.name, "pretender", lease.token)
    elif make_stale == "expired":
        fence, now = good, T0 + 61  # the leader stopped renewing
    elif make_stale == "released":
        assert backend.release_lease(SCHEDULER_LEASE, "leader")
        fence = good
    elif make_stale == "taken_over":
        assert backend.acquire_lease(SCHEDULER_LEASE, "usurper", T0 + 61, ttl=60) is not None
        fence, now = good, T0 + 62
    else:  # a fence naming a lease nobody ever took
        fence = Fence("never-taken", lease.owner, lease.token)

    with pytest.raises(LeaseLost):
        backend.sweep(now, fence)

    assert backend.get("due", now).state == "scheduled"
    run = backend.get("run", now)
    assert (run.state, run.owner) == ("running", "w")
    # "old" is past its expiry (hidden from reads); a valid promote proves it was not deleted
    holders = backend.leases(SCHEDULER_LEASE, now)
    if holders:
        current = Fence(holders[0].name, holders[0].owner, holders[0].token)
    else:
        current = lead(backend, now, owner="successor")
    report = backend.sweep(now, current)
    assert (report.promoted, report.recovered, report.expired) == (1, 1, 1)


def test_sweep_in_bounded_batches_reports_more(backend):
    backend.put([job(f"d{i}", eta=T0 + 1 + i) for i in range(5)], now=T0)
    fence = lead(backend, T0 + 10)
    batches = []
    while True:
        report = backend.sweep(T0 + 10, fence, limit=2)
        batches.append((report.promoted, report.more))
        if not report.more:
            break
        assert len(batches) < 10, "promote never reported that it was done"
    assert batches == [(2, True), (2, True), (1, False)]
    assert ids(backend.claim(["default"], "w", T0 + 10, lease=30, limit=10)) == [
        f"d{i}" for i in range(5)
    ]


def test_bounded_sweep_takes_the_earliest_first(backend):
    backend.put([job("late", eta=T0 + 3), job("tie-1", eta=T0 + 2)], now=T0)
    backend.put([job("early", eta=T0 + 1), job("tie-2", eta=T0 + 2)], now=T0)
    backend.put([job("tie-3", eta=T0 + 2, state="retrying")], now=T0)
    fence = lead(backend, T0 + 10)
    order = []
    for _ in range(5):
        report = backend.sweep(T0 + 10, fence, limit=1)
        assert report.promoted == 1
        order += ids(backend.claim(["default"], "w", T0 + 10, lease=30, limit=5))
    assert order == ["early", "tie-1", "tie-2", "tie-3", "late"]


def test_a_full_batch_says_more(backend):
    """``more`` says a batch was full: the caller looks again before sleeping."""
    backend.put([job("a", eta=T0 + 1), job("b", eta=T0 + 2)], now=T0)
    fence = lead(backend, T0 + 10)
    first = backend.sweep(T0 + 10, fence, limit=2)
    assert (first.promoted, first.more) == (2, True)
    second = backend.sweep(T0 + 10, fence, limit=2)
    assert (second.promoted, second.more) == (0, False)


def test_recovery_in_bounded_batches(backend):
    backend.put([job(f"r{i}") for i in range(3)], now=T0)
    backend.claim(["default"], "dead", T0, lease=1, limit=3)
    fence = lead(backend, T0 + 5)
    first = backend.sweep(T0 + 5, fence, limit=2)
    assert (first.recovered, first.more) == (2, True)
    assert len(backend.list_jobs(T0 + 5, state="running")) == 1
    second = backend.sweep(T0 + 5, fence, limit=2)
    assert (second.recovered, second.more) == (1, False)
    assert len(backend.list_jobs(T0 + 5, state="queued")) == 3


def test_expiry_in_bounded_batches(backend):
    backend.put([job(f"x{i}", result_ttl=1) for i in range(3)], now=T0)
    backend.claim(["default"], "w", T0, lease=30, limit=3)
    backend.finish([Outcome(f"x{i}", "complete") for i in range(3)], "w", T0)
    fence = lead(backend, T0 + 5)
    first = backend.sweep(T0 + 5, fence, limit=2)
    assert (first.expired, first.more) == (2, True)
    second = backend.sweep(T0 + 5, fence, limit=2)
    assert (second.expired, second.more) == (1, False)
    assert backend.sweep(T0 + 5, fence, limit=2).expired == 0


def test_one_sweep_expires_what_its_other_parts_just_moved(backend):
    """Expiry is judged on each record as the sweep's other parts leave it: a job promoted
    past its expiry is deleted; one whose lapsed lease ends it in error gets a new expiry,
    which decides (a result_ttl of 0 expires it at once); one queued again keeps its old
    expiry. (The Redis sweep reads all its batches before writing anything.)"""
    backend.put(
        [
            job("due-expired", eta=T0 + 5, expires_at=T0 + 5),
            job("lapsed-ttl-0", max_deliveries=1, result_ttl=0),
            job("lapsed-to-error", max_deliveries=1, result_ttl=100, expires_at=T0 + 2),
            job("lapsed-to-queue", result_ttl=100, expires_at=T0 + 2),
        ],
        now=T0,
    )
    taken = backend.claim(["default"], "w", T0, lease=1, limit=5)
    assert sorted(ids(taken)) == ["lapsed-to-error", "lapsed-to-queue", "lapsed-ttl-0"]
    report = backend.sweep(T0 + 10, lead(backend, T0 + 10))
    assert (report.promoted, report.recovered, report.failed, report.expired) == (1, 1, 2, 3)
    kept = backend.get("lapsed-to-error", T0 + 10)
    assert (kept.state, kept.expires_at) == ("error", T0 + 110)
    for gone in ("due-expired", "lapsed-ttl-0", "lapsed-to-queue"):
        assert backend.get(gone, T0 + 10) is None
    assert backend.stats(T0 + 10).counts == {("error", "default"): 1}
    assert backend.sweep(T0 + 10, lead(backend, T0 + 10)).expired == 0
