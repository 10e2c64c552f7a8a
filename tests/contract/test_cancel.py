"""cancel: only waiting or queued jobs, and running ones when asked (``running=True``);
the reason is kept until result_ttl passes, and a holder's outcome never replaces it."""

from __future__ import annotations

import pytest

from skunkqueue.jobs import Outcome

from .support import T0, ids, job, lead


def test_cancel_scheduled_queued_and_retrying(backend):
    backend.put(
        [
            job("s", eta=T0 + 60, result_ttl=100),
            job("q", result_ttl=100),
            job("r", eta=T0 + 5, state="retrying", result_ttl=100),
        ],
        now=T0,
    )
    assert backend.cancel(["s", "q", "r"], T0 + 1, "user asked") == [True, True, True]
    for name in ("s", "q", "r"):
        rec = backend.get(name, T0 + 1)
        assert rec.state == "cancelled", name
        assert rec.error == {"reason": "user asked"}, name
        assert rec.expires_at == T0 + 101, name


def test_cancelled_jobs_are_never_promoted_or_claimed(backend):
    backend.put([job("s", eta=T0 + 10), job("q"), job("r", eta=T0 + 10, state="retrying")], now=T0)
    backend.cancel(["s", "q", "r"], T0, "stop")
    assert backend.claim(["default"], "w", T0, lease=30, limit=10) == []
    report = backend.sweep(T0 + 20, lead(backend, T0 + 20))
    assert (report.promoted, report.recovered) == (0, 0)
    assert backend.claim(["default"], "w", T0 + 20, lease=30, limit=10) == []
    assert {r.state for r in backend.list_jobs(T0 + 20)} == {"cancelled"}


def test_cancel_leaves_running_and_finished_jobs(backend):
    backend.put([job("run"), job("done")], now=T0)
    backend.claim(["default"], "w", T0, lease=30, limit=2)
    backend.finish([Outcome("done", "complete", result="7")], "w", T0 + 1)
    assert backend.cancel(["run", "done", "unknown"], T0 + 2, "too late") == [False, False, False]
    run, done = backend.get("run", T0 + 2), backend.get("done", T0 + 2)
    assert (run.state, run.owner, run.error) == ("running", "w", None)
    assert (done.state, done.result, done.error) == ("complete", "7", None)


def test_cancel_twice_answers_false_and_keeps_first_reason(backend):
    backend.put([job("a", result_ttl=100)], now=T0)
    assert backend.cancel(["a"], T0, "first") == [True]
    assert backend.cancel(["a"], T0 + 50, "second") == [False]
    rec = backend.get("a", T0 + 50)
    assert (rec.error, rec.expires_at) == ({"reason": "first"}, T0 + 100)


def test_cancelled_job_expires_after_result_ttl(backend):
    backend.put([job("a", result_ttl=30)], now=T0)
    backend.cancel(["a"], T0 + 10, "bye")
    assert backend.get("a", T0 + 39.5).state == "cancelled"
    assert backend.get("a", T0 + 40) is None
    assert backend.list_jobs(T0 + 40) == []
    assert backend.sweep(T0 + 40, lead(backend, T0 + 40)).expired == 1


def test_cancel_answers_per_id(backend):
    backend.put([job("a"), job("b")], now=T0)
    backend.claim(["default"], "w", T0, lease=30)  # takes "a"
    assert backend.cancel(["a", "b", "nope", "b"], T0, "x") == [False, True, False, False]


# -- running=True: a running job is cancelled too ---------------------------------------


def _running(backend, *names, owner="w", now=T0, **fields):
    backend.put([job(n, **fields) for n in names], now=now)
    taken = backend.claim(["default"], owner, now, lease=30, limit=len(names))
    assert sorted(ids(taken)) == sorted(names)


def test_cancel_running_ends_the_run_and_keeps_its_counts(backend):
    _running(backend, "a", attempts=1, deliveries=1, result_ttl=100)
    assert backend.cancel(["a"], T0 + 5, "overlap: cancel_other", running=True) == [True]
    rec = backend.get("a", T0 + 5)
    assert (rec.state, rec.error) == ("cancelled", {"reason": "overlap: cancel_other"})
    assert (rec.owner, rec.lease_until) == (None, None)
    assert (rec.finished_at, rec.expires_at) == (T0 + 5, T0 + 105)
    assert (rec.attempts, rec.deliveries) == (1, 2)  # the run did not conclude
    assert backend.list_jobs(T0 + 5, state="running") == []
    assert backend.stats(T0 + 5).counts == {("cancelled", "default"): 1}


def test_the_holder_of_a_cancelled_job_can_no_longer_renew_or_finish_it(backend):
    _running(backend, "a", "b", owner="w")
    backend.cancel(["a"], T0 + 1, "stop", running=True)
    assert backend.renew("w", T0 + 2, lease=30, job_ids=["a", "b"]) == {"b"}
    assert backend.renew("w", T0 + 2, lease=30) == {"b"}
    for state in ("complete", "error", "retrying", "queued"):
        outcome = Outcome("a", state, result='"late"', error={"type": "X"}, eta=T0 + 3)
        assert backend.finish([outcome], "w", T0 + 3) == [False], state
    rec = backend.get("a", T0 + 3)
    assert (rec.state, rec.error, rec.result, rec.attempts) == (
        "cancelled",
        {"reason": "stop"},
        None,
        0,
    )
    assert backend.finish([Outcome("b", "complete", result="1")], "w", T0 + 3) == [True]
    assert backend.get("b", T0 + 3).state == "complete"


def test_a_cancelled_running_job_is_never_recovered_released_or_claimed(backend):
    _running(backend, "a", "b", owner="w")
    backend.cancel(["a", "b"], T0 + 1, "stop", running=True)
    assert backend.release("w", T0 + 2, started=["a"]) == {}
    report = backend.sweep(T0 + 60, lead(backend, T0 + 60))  # past every lease
    assert (report.recovered, report.failed, report.next_due) == (0, 0, None)
    assert backend.claim(["default"], "w2", T0 + 60, lease=30, limit=10) == []
    assert {r.state for r in backend.list_jobs(T0 + 60)} == {"cancelled"}


def test_cancel_running_answers_per_id_and_leaves_finished_jobs(backend):
    _running(backend, "run", "done")
    backend.finish([Outcome("done", "complete", result="7")], "w", T0 + 1)
    backend.put([job("q")], now=T0 + 1)
    answers = backend.cancel(["run", "done", "q", "nope", "run"], T0 + 2, "x", running=True)
    assert answers == [True, False, True, False, False]
    assert backend.get("done", T0 + 2).result == "7"
    assert backend.cancel(["run"], T0 + 3, "again", running=True) == [False]
    assert backend.get("run", T0 + 3).error == {"reason": "x"}


def test_a_lapsed_lease_taken_by_another_worker_is_cancelled_from_the_new_holder(backend):
    _running(backend, "a", owner="w1")
    fence = lead(backend, T0 + 31)
    assert backend.sweep(T0 + 31, fence).recovered == 1
    assert ids(backend.claim(["default"], "w2", T0 + 31, lease=30)) == ["a"]
    assert backend.cancel(["a"], T0 + 32, "stop", running=True) == [True]
    assert backend.renew("w2", T0 + 33, lease=30) == set()
    assert backend.finish([Outcome("a", "complete")], "w1", T0 + 33) == [False]
    assert backend.finish([Outcome("a", "complete")], "w2", T0 + 33) == [False]
    assert backend.get("a", T0 + 33).state == "cancelled"


@pytest.mark.parametrize("running", ["yes", 1, None])
def test_cancel_refuses_a_running_flag_that_is_not_a_bool(backend, running):
    _running(backend, "a")
    with pytest.raises(TypeError, match="running must be True or False"):
        backend.cancel(["a"], T0 + 1, "x", running=running)
    assert backend.get("a", T0 + 1).state == "running"
