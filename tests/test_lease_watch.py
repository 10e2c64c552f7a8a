"""``LeaseWatch``, the worker's rule for when it may start a job or claim: driven by a fake
clock, so every boundary is exact. (tests/test_worker_heartbeat.py shows the rule at work
in a real worker whose store freezes.)"""

from __future__ import annotations

import logging
import threading

import pytest

from skunkqueue.worker.leases import CALL_SHARE, FRESH_SHARE, LeaseWatch, heartbeat_call_timeout

from .e2e.referee import incidents

LEASE = 3.0  # so leases are known good for 2 s after a renewal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch(clock: Clock) -> LeaseWatch:
    return LeaseWatch(LEASE, "w1", clock=clock)


def beat(watch: LeaseWatch) -> None:
    watch.renewed(watch.beat_began())


def test_a_renewal_stuck_after_a_full_beat_interval_still_fails_inside_the_lease() -> None:
    """Beats come every third of a lease at most; the one after the last good beat, stuck
    for its whole bound, fails with a third of the lease left for another try."""
    assert heartbeat_call_timeout(30.0) == pytest.approx(10.0)
    assert 1 / 3 + CALL_SHARE == pytest.approx(2 / 3)


def test_a_new_worker_may_claim_for_two_thirds_of_a_lease(watch: LeaseWatch, clock: Clock) -> None:
    clock.now += LEASE * FRESH_SHARE - 0.001
    assert watch.may_claim()
    clock.now += 0.001
    assert not watch.may_claim()


def test_each_beat_that_goes_through_renews_the_right_to_claim(
    watch: LeaseWatch, clock: Clock
) -> None:
    for _ in range(5):
        clock.now += 1.9
        beat(watch)
        assert watch.may_claim()
    clock.now += 2.0
    assert not watch.may_claim()


def test_a_beat_counts_from_when_it_began_not_when_it_returned(
    watch: LeaseWatch, clock: Clock
) -> None:
    started = watch.beat_began()
    clock.now += 1.5  # a slow renewal: the lease it wrote runs from its start
    watch.renewed(started)
    clock.now += 0.5
    assert not watch.may_claim()


def test_a_batch_runs_on_its_claims_lease_until_a_beat_covers_it(
    watch: LeaseWatch, clock: Clock
) -> None:
    clock.now += 1.0
    early = watch.beat_began()  # its snapshot was taken before the batch was held
    clock.now += 0.5
    claim_began = clock.now
    clock.now += 0.1  # the claim call
    watch.claimed(claim_began)
    watch.renewed(early)  # goes through, but renewed nothing of the new batch
    clock.now = claim_began + LEASE * FRESH_SHARE - 0.001
    assert watch.may_start()
    clock.now += 0.001
    assert not watch.may_start()
    beat(watch)  # a beat that knew of the batch renews it
    assert watch.may_start()


def test_a_claim_slower_than_the_last_beat_does_not_borrow_its_freshness(
    watch: LeaseWatch, clock: Clock
) -> None:
    claim_began = clock.now
    clock.now += 1.8  # the claim call blocks; a beat (of nothing) goes through meanwhile
    beat(watch)
    watch.claimed(claim_began)  # its jobs' leases run from the claim, 1.8 s ago
    clock.now += 0.3
    assert watch.may_claim()  # the heartbeat is fine
    assert not watch.may_start()  # but this batch's leases are 2.1 s old


def test_stopping_is_logged_once_and_resuming_once(
    watch: LeaseWatch, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="skunkqueue.worker")
    clock.now += LEASE
    for _ in range(10):
        assert not watch.may_claim()
        assert not watch.may_start()
    beat(watch)
    assert watch.may_claim() and watch.may_start()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "worker w1: its leases were last renewed 3.0 s ago (lease 3 s); it starts no "
            "job and claims none until a renewal goes through",
        ),
        (logging.INFO, "worker w1: leases renewed again; resuming"),
    ]


def test_a_pause_is_trouble_for_the_end_to_end_referee(
    watch: LeaseWatch, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="skunkqueue.worker")
    clock.now += LEASE
    watch.may_claim()
    [record] = caplog.records
    line = (
        f"2026-12-02 06:00:00,000 WARNING skunq-worker-0 skunkqueue.worker: {record.getMessage()}"
    )
    assert len(list(incidents("pool", line))) == 1


def test_waiting_for_a_renewal_ends_when_one_goes_through(watch: LeaseWatch) -> None:
    waited = threading.Event()

    def wait() -> None:
        watch.wait_for_renewal(30.0)
        waited.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    while not waited.is_set():  # notify until the waiter has begun waiting and woken
        beat(watch)
        waited.wait(0.01)
    waiter.join(5)
    assert not waiter.is_alive()
