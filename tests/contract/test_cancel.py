"""cancel: only waiting or queued jobs; the reason is kept until result_ttl passes."""

from __future__ import annotations

from skunkqueue.jobs import Outcome

from .support import T0, job, lead


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
