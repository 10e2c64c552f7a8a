"""retry by hand, and the history of errors: what every backend keeps of earlier attempts."""

from __future__ import annotations

import time

import pytest

from skunkqueue.jobs import Outcome
from skunkqueue.persistence import rules

from ..waiting import timed_wait
from .support import T0, ids, job, lead
from .test_wait import DEADLINE, PROMPT, settle

ERR = {"type": "ValueError", "message": "bad", "traceback": "Traceback ...\nValueError: bad"}


def _failed(backend, job_id: str, *, at: float = T0, route: str = "default", **fields) -> None:
    """Put ``job_id`` and run it once to an ``error`` outcome at ``at + 1``."""
    backend.put([job(job_id, route=route, eta=at, result_ttl=100, **fields)], at)
    [taken] = backend.claim([route], "w", at, lease=30)
    assert taken.id == job_id
    assert backend.finish([Outcome(job_id, "error", error=ERR)], "w", at + 1) == [True]


def test_an_error_goes_back_to_its_route_keeping_its_attempts(backend):
    _failed(backend, "a", max_deliveries=2)
    before = backend.get("a", T0 + 2)
    assert backend.retry(["a"], T0 + 2) == [True]
    after = backend.get("a", T0 + 2)
    assert (after.state, after.eta, after.route) == ("queued", T0 + 2, "default")
    assert (after.attempts, after.deliveries) == (1, 1)
    assert (after.error, after.result, after.finished_at, after.expires_at) == (None,) * 4
    assert (after.owner, after.lease_until) == (None, None)
    assert after.history == [
        {
            "attempt": 1,
            "state": "error",
            "error": ERR,
            "started_at": before.started_at,
            "finished_at": T0 + 1,
        }
    ]
    [again] = backend.claim(["default"], "w2", T0 + 3, lease=30)
    assert (again.id, again.deliveries, again.history) == ("a", 2, after.history)


def test_a_retried_job_joins_the_back_of_its_queue(backend):
    _failed(backend, "old", at=T0 - 10)
    backend.put([job("first", eta=T0), job("second", eta=T0 + 5)], T0 + 5)
    assert backend.retry(["old"], T0 + 5) == [True]
    assert backend.get("old", T0 + 5).seq > backend.get("second", T0 + 5).seq
    taken = backend.claim(["default"], "w", T0 + 6, lease=30, limit=10)
    assert ids(taken) == ["first", "second", "old"]


def test_a_cancelled_job_is_retried_with_its_reason_in_history(backend):
    backend.put([job("c", eta=T0 + 60, result_ttl=100)], T0)
    assert backend.cancel(["c"], T0 + 1, "not now") == [True]
    assert backend.retry(["c"], T0 + 2) == [True]
    after = backend.get("c", T0 + 2)
    assert (after.state, after.eta, after.attempts, after.deliveries) == ("queued", T0 + 2, 0, 0)
    assert after.history == [
        {
            "attempt": 0,
            "state": "cancelled",
            "error": {"reason": "not now"},
            "started_at": None,
            "finished_at": T0 + 1,
        }
    ]


def test_only_error_and_cancelled_jobs_that_live_are_retried(backend):
    backend.put(
        [
            job("scheduled", eta=T0 + 60),
            job("queued"),
            job("retrying", eta=T0 + 60, state="retrying", error=ERR),
            job("running", route="r"),
            job("complete", route="c", result_ttl=100),
        ],
        T0,
    )
    backend.claim(["r"], "w", T0, lease=30)
    backend.claim(["c"], "w", T0, lease=30)
    backend.finish([Outcome("complete", "complete", result="1")], "w", T0)
    _failed(backend, "expired", at=T0 - 200)  # expires at T0 - 99
    names = ["scheduled", "queued", "retrying", "running", "complete", "expired", "unknown"]
    before = {n: backend.get(n, T0 + 1) for n in names}
    assert backend.retry(names, T0 + 1) == [False] * len(names)
    assert {n: backend.get(n, T0 + 1) for n in names} == before


def test_retrying_the_same_id_twice_in_one_call_queues_it_once(backend):
    _failed(backend, "a")
    assert backend.retry(["a", "a"], T0 + 2) == [True, False]
    assert len(backend.get("a", T0 + 2).history) == 1
    assert backend.retry(["a"], T0 + 3) == [False]  # queued now
    assert backend.stats(T0 + 3).counts == {("queued", "default"): 1}


def test_retry_restores_the_lost_delivery_budget(backend):
    """A job that ended in error after lost deliveries can run again."""
    backend.put([job("lost", max_deliveries=1, result_ttl=100)], T0)
    backend.claim(["default"], "w", T0, lease=5)
    report = backend.sweep(T0 + 10, lead(backend, T0 + 10))
    assert report.failed == 1
    lost = backend.get("lost", T0 + 10)
    assert (lost.state, lost.error["reason"]) == ("error", "lost deliveries")
    assert backend.retry(["lost"], T0 + 11) == [True]
    again = backend.get("lost", T0 + 11)
    assert (again.attempts, again.deliveries, again.history[0]["error"]) == (0, 0, lost.error)
    [taken] = backend.claim(["default"], "w2", T0 + 12, lease=5)
    assert taken.id == "lost"
    assert backend.finish([Outcome("lost", "complete", result="1")], "w2", T0 + 13) == [True]


def test_each_retry_keeps_the_errors_before_it(backend):
    """An attempt after a ``retrying`` one moves that error to history; a retry by hand
    moves the last one; past HISTORY_KEEP the oldest go."""
    backend.put([job("a", result_ttl=100, max_deliveries=100)], T0)
    now = T0
    for attempt in range(1, rules.HISTORY_KEEP + 3):
        backend.claim(["default"], "w", now, lease=30)
        error = {**ERR, "message": f"attempt {attempt}"}
        assert backend.finish([Outcome("a", "error", error=error)], "w", now + 0.5) == [True]
        assert backend.retry(["a"], now + 1) == [True]
        now += 2
    record = backend.get("a", now)
    assert len(record.history) == rules.HISTORY_KEEP
    assert [h["attempt"] for h in record.history] == list(range(3, rules.HISTORY_KEEP + 3))
    assert record.history[-1]["error"]["message"] == f"attempt {rules.HISTORY_KEEP + 2}"


def test_an_outcome_after_a_retrying_attempt_keeps_its_error(backend):
    backend.put([job("a", result_ttl=100)], T0)
    backend.claim(["default"], "w", T0, lease=30)
    backend.finish([Outcome("a", "retrying", error=ERR, eta=T0 + 1)], "w", T0 + 0.5)
    assert backend.get("a", T0 + 0.5).history is None
    backend.sweep(T0 + 1, lead(backend, T0 + 1))
    backend.claim(["default"], "w", T0 + 1, lease=30)
    assert backend.finish([Outcome("a", "complete", result="3")], "w", T0 + 2) == [True]
    done = backend.get("a", T0 + 2)
    assert (done.state, done.error, done.attempts) == ("complete", None, 2)
    assert done.history == [
        {"attempt": 1, "state": "retrying", "error": ERR, "started_at": None, "finished_at": None}
    ]


def test_history_survives_exact_times_and_odd_text(backend):
    """Times keep every digit, and messages keep line breaks, quotes and non-ASCII text."""
    odd = {"type": "E", "message": 'line\none "quoted" \u00e9\u2028 }{ ,\n', "traceback": "\n"}
    at = T0 + 0.123456789012345
    backend.put([job("a", eta=at, result_ttl=100)], at)
    backend.claim(["default"], "w", at, lease=30)
    backend.finish([Outcome("a", "error", error=odd)], "w", at + 0.000001)
    assert backend.retry(["a"], at + 1) == [True]
    [entry] = backend.get("a", at + 1).history
    assert entry == {
        "attempt": 1,
        "state": "error",
        "error": odd,
        "started_at": at,
        "finished_at": at + 0.000001,
    }


def test_retry_takes_at_most_max_batch_ids(backend):
    with pytest.raises(ValueError, match="at most"):
        backend.retry([f"j{i}" for i in range(rules.MAX_BATCH + 1)], T0)
    with pytest.raises(TypeError):
        backend.retry("abc", T0)
    assert backend.retry([], T0) == []


def test_an_idle_worker_wakes_when_a_job_is_retried_on_its_route(store):
    worker, operator = store.open(), store.open()
    now = time.time()
    _failed(operator, "a", at=now, route="r")
    settle(worker, ["r"])
    join = timed_wait(worker, DEADLINE, ["r"])
    join.begun()  # the retry happens during the wait
    assert operator.retry(["a"], time.time()) == [True]
    assert join() < PROMPT
    assert ids(worker.claim(["r"], "w", time.time(), 30)) == ["a"]
