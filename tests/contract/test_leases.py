"""Named leases: take, renew, take over when expired, release; the token fences writes."""

from __future__ import annotations

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.persistence import Fence, ScheduleRecord
from skunkqueue.persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX

from .support import T0


def test_acquire_free_lease(backend):
    lease = backend.acquire_lease("leader", "a", T0, ttl=30, info={"host": "h1", "pid": 12})
    assert lease is not None
    assert (lease.name, lease.owner, lease.until, lease.info) == (
        "leader",
        "a",
        T0 + 30,
        {"host": "h1", "pid": 12},
    )
    assert isinstance(lease.token, int)
    [listed] = backend.leases("leader", T0)
    assert listed == lease


def test_acquire_held_lease_is_refused(backend):
    first = backend.acquire_lease("leader", "a", T0, ttl=30)
    assert backend.acquire_lease("leader", "b", T0 + 29, ttl=30) is None
    assert backend.acquire_lease("leader", "b", T0 + 30, ttl=30) is None  # "a" holds through until
    assert backend.leases("leader", T0 + 29) == [first]


def test_no_instant_has_two_holders(backend):
    """The fence check and acquire agree on when a lease ends: held through ``until``."""
    lease = backend.acquire_lease(SCHEDULER_LEASE, "a", T0, ttl=30)
    fence = Fence(lease.name, lease.owner, lease.token)
    schedule = ScheduleRecord("s", {"every": 5}, {}, T0 + 5)
    backend.save_schedule(schedule, T0 + 30, fence=fence)  # still the leader at until
    assert backend.acquire_lease(SCHEDULER_LEASE, "b", T0 + 30, ttl=30) is None
    with pytest.raises(LeaseLost):
        backend.save_schedule(schedule, T0 + 30.5, fence=fence)
    taken = backend.acquire_lease(SCHEDULER_LEASE, "b", T0 + 30.5, ttl=30)
    assert (taken.owner, taken.token) == ("b", lease.token + 1)


def test_renewal_keeps_the_token_and_extends(backend):
    first = backend.acquire_lease("leader", "a", T0, ttl=30, info={"v": 1})
    renewed = backend.acquire_lease("leader", "a", T0 + 20, ttl=30, info={"v": 2})
    assert renewed.token == first.token
    assert (renewed.until, renewed.info) == (T0 + 50, {"v": 2})
    assert backend.acquire_lease("leader", "b", T0 + 40, ttl=30) is None
    assert backend.leases("leader", T0 + 40) == [renewed]


def test_expired_lease_is_taken_over_with_a_new_token(backend):
    first = backend.acquire_lease("leader", "a", T0, ttl=30)
    taken = backend.acquire_lease("leader", "b", T0 + 31, ttl=30)
    assert taken is not None
    assert (taken.owner, taken.token, taken.until) == ("b", first.token + 1, T0 + 61)
    # the deposed owner cannot renew its way back while "b" holds the lease
    assert backend.acquire_lease("leader", "a", T0 + 32, ttl=30) is None
    back = backend.acquire_lease("leader", "a", T0 + 62, ttl=30)
    assert (back.owner, back.token) == ("a", first.token + 2)


def test_tokens_are_per_lease_name(backend):
    a = backend.acquire_lease("one", "x", T0, ttl=30)
    b = backend.acquire_lease("two", "y", T0, ttl=30)
    c = backend.acquire_lease("two", "z", T0 + 31, ttl=30)
    assert c.token == b.token + 1
    assert backend.acquire_lease("one", "x", T0 + 1, ttl=30).token == a.token


def test_release_by_owner_frees_the_lease_and_keeps_the_token(backend):
    first = backend.acquire_lease("leader", "a", T0, ttl=30)
    assert backend.release_lease("leader", "b") is False
    assert backend.leases("leader", T0) == [first]
    assert backend.release_lease("leader", "a") is True
    assert backend.leases("leader", T0) == []
    taken = backend.acquire_lease("leader", "b", T0 + 1, ttl=30)
    assert (taken.owner, taken.token) == ("b", first.token + 1)


def test_release_unknown_lease_is_false(backend):
    assert backend.release_lease("never", "a") is False


def test_reacquire_after_own_release_is_a_new_holding(backend):
    first = backend.acquire_lease("leader", "a", T0, ttl=30)
    backend.release_lease("leader", "a")
    again = backend.acquire_lease("leader", "a", T0 + 1, ttl=30)
    assert again.token > first.token
    with pytest.raises(LeaseLost):
        backend.save_schedule(
            ScheduleRecord("s", {"every": 5}, {}, T0 + 5), T0 + 1, Fence("leader", "a", first.token)
        )


def test_released_lease_is_free_even_at_time_zero(backend):
    """A fake clock may start at 0: a released lease must not look held at that instant."""
    first = backend.acquire_lease("leader", "a", 0.0, ttl=30)
    assert backend.release_lease("leader", "a")
    taken = backend.acquire_lease("leader", "b", 0.0, ttl=30)
    assert taken is not None
    assert (taken.owner, taken.token) == ("b", first.token + 1)


def test_leases_lists_unexpired_by_prefix(backend):
    w1 = backend.acquire_lease(WORKER_LEASE_PREFIX + "host-1", "w1", T0, ttl=30, info={"pid": 1})
    w2 = backend.acquire_lease(WORKER_LEASE_PREFIX + "host-2", "w2", T0, ttl=10, info={"pid": 2})
    backend.acquire_lease(SCHEDULER_LEASE, "s", T0, ttl=30)
    backend.acquire_lease("workers-not-a-prefix-match", "x", T0, ttl=30)
    found = backend.leases(WORKER_LEASE_PREFIX, T0 + 5)
    assert sorted(found, key=lambda lease: lease.name) == [w1, w2]
    assert backend.leases(WORKER_LEASE_PREFIX, T0 + 11) == [w1]
    assert backend.leases(WORKER_LEASE_PREFIX, T0 + 31) == []
    assert {lease.name for lease in backend.leases("", T0)} == {
        WORKER_LEASE_PREFIX + "host-1",
        WORKER_LEASE_PREFIX + "host-2",
        SCHEDULER_LEASE,
        "workers-not-a-prefix-match",
    }


def test_leases_are_per_queue(store):
    mine, theirs = store.open(), store.open(queue=store.queue + "-other")
    mine_lease = mine.acquire_lease(SCHEDULER_LEASE, "a", T0, ttl=30)
    theirs_lease = theirs.acquire_lease(SCHEDULER_LEASE, "b", T0, ttl=30)
    assert mine_lease is not None and theirs_lease is not None
    assert mine.leases(SCHEDULER_LEASE, T0) == [mine_lease]
    assert theirs.leases(SCHEDULER_LEASE, T0) == [theirs_lease]


def test_forget_leases_deletes_the_ended_ones_with_the_prefix(backend):
    w = WORKER_LEASE_PREFIX
    live = backend.acquire_lease(w + "live", "l", T0, ttl=100)
    backend.acquire_lease(w + "expired", "e", T0, ttl=10)
    backend.acquire_lease(w + "released", "r", T0, ttl=100)
    assert backend.release_lease(w + "released", "r")
    at_edge = backend.acquire_lease(w + "at-edge", "a", T0, ttl=50)  # ends at `before`
    other = backend.acquire_lease("other-expired", "o", T0, ttl=10)

    assert backend.forget_leases(w, before=T0 + 50) == 2
    assert backend.forget_leases(w, before=T0 + 50) == 0
    assert backend.leases(w, T0 + 20) == [at_edge, live]
    # A forgotten lease has no token left: taking its name starts over, as a new name does.
    fresh = backend.acquire_lease("never-seen", "x", T0 + 60, ttl=10).token
    assert backend.acquire_lease(w + "expired", "e2", T0 + 60, ttl=10).token == fresh
    assert backend.acquire_lease(w + "released", "r2", T0 + 60, ttl=10).token == fresh
    # The others kept theirs, so a new holder's token goes on from it.
    assert backend.acquire_lease(w + "at-edge", "a2", T0 + 60, ttl=10).token == at_edge.token + 1
    assert backend.acquire_lease("other-expired", "o2", T0 + 60, ttl=10).token == other.token + 1


def test_forget_leases_stops_at_its_limit(backend):
    for i in range(3):
        backend.acquire_lease(f"{WORKER_LEASE_PREFIX}{i}", "w", T0, ttl=1)
    assert backend.forget_leases(WORKER_LEASE_PREFIX, before=T0 + 10, limit=2) == 2
    assert backend.forget_leases(WORKER_LEASE_PREFIX, before=T0 + 10, limit=2) == 1


def test_forget_leases_is_per_queue(store):
    mine, theirs = store.open(), store.open(queue=store.queue + "-other")
    mine.acquire_lease(WORKER_LEASE_PREFIX + "a", "a", T0, ttl=1)
    theirs_lease = theirs.acquire_lease(WORKER_LEASE_PREFIX + "a", "b", T0, ttl=1)
    assert mine.forget_leases(WORKER_LEASE_PREFIX, before=T0 + 10) == 1
    taken = theirs.acquire_lease(WORKER_LEASE_PREFIX + "a", "c", T0 + 10, ttl=1)
    assert taken.token == theirs_lease.token + 1
