"""renew and finish: every change to claimed work checks the owner and says if it took effect."""

from __future__ import annotations

import pytest

from skunkqueue.jobs import Outcome

from .support import T0, ids, job, lead


def _claimed(backend, *names, owner="w1", now=T0, lease=30.0, **fields):
    backend.put([job(n, **fields) for n in names], now=now)
    taken = backend.claim(["default"], owner, now, lease=lease, limit=len(names))
    assert sorted(ids(taken)) == sorted(names)
    return taken


# -- renew ------------------------------------------------------------------------


def test_renew_extends_every_lease_the_owner_holds(backend):
    _claimed(backend, "a", "b", owner="w1")
    _claimed(backend, "c", owner="w2")
    assert backend.renew("w1", T0 + 10, lease=60) == {"a", "b"}
    assert backend.get("a", T0 + 10).lease_until == T0 + 70
    assert backend.get("b", T0 + 10).lease_until == T0 + 70
    assert backend.get("c", T0 + 10).lease_until == T0 + 30


def test_renew_only_named_jobs(backend):
    _claimed(backend, "a", "b")
    assert backend.renew("w1", T0 + 5, lease=60, job_ids=["b", "unknown"]) == {"b"}
    assert backend.get("a", T0 + 5).lease_until == T0 + 30
    assert backend.get("b", T0 + 5).lease_until == T0 + 65
    assert backend.renew("w1", T0 + 5, lease=60, job_ids=[]) == set()
    assert backend.get("a", T0 + 5).lease_until == T0 + 30


def test_renew_by_another_owner_changes_nothing(backend):
    _claimed(backend, "a", owner="w1")
    assert backend.renew("intruder", T0 + 5, lease=600) == set()
    assert backend.renew("intruder", T0 + 5, lease=600, job_ids=["a"]) == set()
    stored = backend.get("a", T0 + 5)
    assert (stored.owner, stored.lease_until) == ("w1", T0 + 30)


def test_renew_reports_jobs_no_longer_held(backend):
    _claimed(backend, "a", "b")
    backend.finish([Outcome("a", "complete")], "w1", T0 + 1)
    assert backend.renew("w1", T0 + 2, lease=30, job_ids=["a", "b"]) == {"b"}
    assert backend.renew("w1", T0 + 2, lease=30) == {"b"}
    assert backend.get("a", T0 + 2).lease_until is None


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf")])
def test_renew_refuses_a_lease_that_is_not_a_positive_time(backend, lease):
    """Giving jobs up is ``release``'s job; a zero lease is a mistake, refused unwritten."""
    _claimed(backend, "a", owner="w1")
    with pytest.raises(ValueError, match="lease must be a positive number"):
        backend.renew("w1", T0 + 1, lease=lease)
    assert backend.get("a", T0 + 1).lease_until == T0 + 30


# -- finish -----------------------------------------------------------------------


def test_finish_complete_stores_result_and_expiry(backend):
    _claimed(backend, "a", result_ttl=100)
    assert backend.finish([Outcome("a", "complete", result='{"sum": 3}')], "w1", T0 + 4) == [True]
    done = backend.get("a", T0 + 4)
    assert (done.state, done.result, done.error, done.attempts, done.deliveries) == (
        "complete",
        '{"sum": 3}',
        None,
        1,
        1,
    )
    assert (done.finished_at, done.expires_at) == (T0 + 4, T0 + 104)
    assert (done.owner, done.lease_until) == (None, None)
    assert backend.get("a", T0 + 103.9) is not None
    assert backend.get("a", T0 + 104) is None


def test_finish_error_stores_error(backend):
    _claimed(backend, "a", result_ttl=50)
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    assert backend.finish([Outcome("a", "error", error=error)], "w1", T0 + 1) == [True]
    failed = backend.get("a", T0 + 1)
    assert (failed.state, failed.error, failed.result, failed.attempts) == ("error", error, None, 1)
    assert (failed.finished_at, failed.expires_at, failed.owner) == (T0 + 1, T0 + 51, None)


def test_finish_retrying_reschedules_at_eta(backend):
    _claimed(backend, "a")
    error = {"type": "IOError", "message": "flaky"}
    assert backend.finish([Outcome("a", "retrying", error=error, eta=T0 + 40)], "w1", T0 + 1) == [
        True
    ]
    waiting = backend.get("a", T0 + 1)
    assert (waiting.state, waiting.eta, waiting.error, waiting.attempts) == (
        "retrying",
        T0 + 40,
        error,
        1,
    )
    assert (waiting.owner, waiting.lease_until, waiting.expires_at) == (None, None, None)
    assert backend.claim(["default"], "w2", T0 + 39, lease=30) == []
    fence = lead(backend, T0 + 39)
    assert backend.sweep(T0 + 39, fence).promoted == 0
    assert backend.sweep(T0 + 40, fence).promoted == 1
    [again] = backend.claim(["default"], "w2", T0 + 40, lease=30)
    assert (again.id, again.deliveries, again.attempts) == ("a", 2, 1)


def test_finish_retrying_without_eta_is_due_now(backend):
    _claimed(backend, "a")
    backend.finish([Outcome("a", "retrying", error={"m": "x"})], "w1", T0 + 7)
    assert backend.get("a", T0 + 7).eta == T0 + 7
    assert backend.sweep(T0 + 7, lead(backend, T0 + 7)).promoted == 1


def test_finish_queued_hands_the_job_back_to_be_taken_first(backend):
    backend.put([job("a", eta=T0 - 5), job("b", eta=T0 - 5), job("c", eta=T0 - 1)], now=T0)
    assert ids(backend.claim(["default"], "w1", T0, lease=30)) == ["a"]
    assert backend.finish([Outcome("a", "queued")], "w1", T0 + 1) == [True]
    back = backend.get("a", T0 + 1)
    assert (back.state, back.deliveries, back.attempts, back.eta) == ("queued", 0, 0, T0 - 5)
    assert (back.owner, back.lease_until) == (None, None)
    assert ids(backend.claim(["default"], "w2", T0 + 1, lease=30, limit=3)) == ["a", "b", "c"]


def test_finish_by_another_owner_is_refused(backend):
    _claimed(backend, "a", owner="w1")
    assert backend.finish([Outcome("a", "complete", result="1")], "w2", T0 + 1) == [False]
    stored = backend.get("a", T0 + 1)
    assert (stored.state, stored.owner, stored.result, stored.attempts) == (
        "running",
        "w1",
        None,
        0,
    )


def test_finish_answers_per_outcome(backend):
    _claimed(backend, "mine", "other", owner="w1")
    backend.put([job("queued")], now=T0)
    answers = backend.finish(
        [
            Outcome("mine", "complete", result="1"),
            Outcome("unknown", "complete"),
            Outcome("queued", "complete"),
            Outcome("mine", "error", error={"m": "twice"}),
            Outcome("other", "error", error={"m": "boom"}),
        ],
        "w1",
        T0 + 1,
    )
    assert answers == [True, False, False, False, True]
    assert backend.get("mine", T0 + 1).state == "complete"
    assert backend.get("mine", T0 + 1).result == "1"
    assert backend.get("queued", T0 + 1).state == "queued"
    assert backend.get("other", T0 + 1).state == "error"


def test_finish_after_lease_was_recovered_is_refused(backend):
    """A worker that stopped renewing has lost its job; its late result must not land."""
    _claimed(backend, "a", owner="slow", lease=10)
    assert backend.sweep(T0 + 11, lead(backend, T0 + 11)).recovered == 1
    [retaken] = backend.claim(["default"], "fast", T0 + 12, lease=10)
    assert (retaken.id, retaken.deliveries) == ("a", 2)
    assert backend.finish([Outcome("a", "complete", result='"late"')], "slow", T0 + 13) == [False]
    assert backend.renew("slow", T0 + 13, lease=10) == set()
    assert backend.finish([Outcome("a", "complete", result='"fresh"')], "fast", T0 + 14) == [True]
    done = backend.get("a", T0 + 14)
    assert (done.state, done.result, done.attempts, done.deliveries) == (
        "complete",
        '"fresh"',
        1,
        2,
    )
