"""release: a dead worker's jobs come back at once, started ones counted as lost deliveries."""

from __future__ import annotations

import time

from skunkqueue.jobs import Outcome
from skunkqueue.persistence.rules import lost_deliveries_error

from ..waiting import timed_wait
from .support import T0, ids, job
from .test_wait import DEADLINE, PROMPT, settle


def _claimed(backend, *names, owner="w1", now=T0, lease=30.0):
    taken = backend.claim(["default"], owner, now, lease=lease, limit=len(names))
    assert ids(taken) == list(names)
    return taken


def test_started_jobs_lose_a_delivery_and_unstarted_ones_go_back_unrun(backend):
    backend.put([job(n, eta=T0 - 9 + i) for i, n in enumerate("abcd")], now=T0)
    _claimed(backend, "a", "b", "c", owner="w1")
    assert backend.release("w1", T0 + 5, started=["a", "c"]) == {
        "a": "queued",
        "b": "queued",
        "c": "queued",
    }
    for name, deliveries in (("a", 1), ("b", 0), ("c", 1)):
        r = backend.get(name, T0 + 5)
        assert (r.state, r.owner, r.lease_until) == ("queued", None, None), name
        assert (r.deliveries, r.attempts, r.deliveries - r.attempts) == (
            deliveries,
            0,
            deliveries,
        ), name
        assert (r.eta, r.error, r.finished_at, r.expires_at) == (
            T0 - 9 + "abcd".index(name),
            None,
            None,
            None,
        )
    assert backend.stats(T0 + 5).counts == {("queued", "default"): 4}


def test_released_jobs_keep_their_place_ahead_of_later_ones(backend):
    backend.put([job(n, eta=T0 - 5 + i) for i, n in enumerate("abcde")], now=T0)
    _claimed(backend, "a", "b", owner="w1")
    _claimed(backend, "c", owner="w2")
    backend.release("w1", T0 + 1, started=["b"])
    assert ids(backend.claim(["default"], "w3", T0 + 2, lease=30, limit=10)) == ["a", "b", "d", "e"]


def test_a_job_that_lost_max_deliveries_ends_in_error(backend):
    backend.put([job("doomed", max_deliveries=2, result_ttl=100)], now=T0)
    _claimed(backend, "doomed", owner="w1")
    assert backend.release("w1", T0 + 1, started=["doomed"]) == {"doomed": "queued"}
    _claimed(backend, "doomed", owner="w2", now=T0 + 2)
    assert backend.release("w2", T0 + 3, started=["doomed"]) == {"doomed": "error"}
    failed = backend.get("doomed", T0 + 3)
    assert (failed.state, failed.owner, failed.lease_until) == ("error", None, None)
    assert failed.error == lost_deliveries_error(2, 2)
    assert failed.error["reason"] == "lost deliveries"
    assert (failed.deliveries, failed.attempts) == (2, 0)
    assert (failed.finished_at, failed.expires_at) == (T0 + 3, T0 + 103)
    assert backend.claim(["default"], "w3", T0 + 4, lease=30) == []
    assert backend.stats(T0 + 4).counts == {("error", "default"): 1}


def test_jobs_that_never_started_never_use_up_deliveries(backend):
    backend.put([job("a", max_deliveries=1)], now=T0)
    for n in range(3):
        _claimed(backend, "a", owner=f"w{n}", now=T0 + n)
        assert backend.release(f"w{n}", T0 + n, started=["other"]) == {"a": "queued"}
    again = backend.get("a", T0 + 3)
    assert (again.state, again.deliveries) == ("queued", 0)


def test_other_owners_and_finished_jobs_are_untouched(backend):
    backend.put([job(n, eta=T0 - 9 + i) for i, n in enumerate("abcd")], now=T0)
    _claimed(backend, "a", "b", owner="dead")
    _claimed(backend, "c", owner="alive")
    assert backend.finish([Outcome("a", "complete", result="1")], "dead", T0 + 1) == [True]
    # An id in started that the owner does not hold changes nothing either.
    assert backend.release("dead", T0 + 2, started=["a", "b", "c", "d"]) == {"b": "queued"}
    done = backend.get("a", T0 + 2)
    assert (done.state, done.result, done.attempts, done.deliveries) == ("complete", "1", 1, 1)
    other = backend.get("c", T0 + 2)
    assert (other.state, other.owner, other.lease_until, other.deliveries) == (
        "running",
        "alive",
        T0 + 30,
        1,
    )
    assert backend.get("d", T0 + 2).state == "queued"
    assert backend.renew("alive", T0 + 2, lease=30) == {"c"}


def test_a_second_release_returns_nothing(backend):
    backend.put([job("a"), job("b")], now=T0)
    _claimed(backend, "a", "b", owner="w1")
    assert backend.release("w1", T0 + 1, started=["a"]) == {"a": "queued", "b": "queued"}
    assert backend.release("w1", T0 + 1, started=["a"]) == {}
    assert backend.release("nobody", T0 + 1) == {}
    assert (backend.get("a", T0 + 1).deliveries, backend.get("b", T0 + 1).deliveries) == (1, 0)


def test_the_dead_owner_can_no_longer_finish_or_renew(backend):
    backend.put([job("a")], now=T0)
    _claimed(backend, "a", owner="dead")
    backend.release("dead", T0 + 1)
    assert backend.finish([Outcome("a", "complete", result="1")], "dead", T0 + 2) == [False]
    assert backend.renew("dead", T0 + 2, lease=30) == set()
    stored = backend.get("a", T0 + 2)
    assert (stored.state, stored.result, stored.attempts) == ("queued", None, 0)


def test_everything_held_is_released_in_one_call(backend):
    """More jobs than any backend hands back per batch (Redis, FoundationDB: 250)."""
    names = [f"j{i:03}" for i in range(260)]
    backend.put([job(n) for n in names], now=T0)
    held: list[str] = []
    while taken := backend.claim(["default"], "w1", T0, lease=30, limit=len(names)):
        held += ids(taken)  # a backend may take fewer per call than asked
    assert held == names
    started = names[::2]
    released = backend.release("w1", T0 + 1, started=started)
    assert released == {n: "queued" for n in names}
    assert backend.stats(T0 + 1).counts == {("queued", "default"): len(names)}
    assert sum(backend.get(n, T0 + 1).deliveries for n in names) == len(started)
    assert backend.release("w1", T0 + 1) == {}


def test_a_release_wakes_an_idle_worker(store):
    worker, supervisor = store.open(), store.open()
    supervisor.put([job("a", route="r")], time.time())
    assert ids(supervisor.claim(["r"], "dead", time.time(), 30)) == ["a"]
    settle(worker, ["r"])
    join = timed_wait(worker, DEADLINE, ["r"])
    join.begun()  # the release happens during the wait (one before it would wake it too)
    assert supervisor.release("dead", time.time()) == {"a": "queued"}
    assert join() < PROMPT
    assert ids(worker.claim(["r"], "w", time.time(), 30)) == ["a"]
