"""list_jobs and stats: read-only views over unexpired jobs."""

from __future__ import annotations

from skunkqueue.jobs import Outcome

from .support import T0, ids, job


def _mixed(backend):
    """One job in each state, on two routes; "old" expires at T0 + 10."""
    backend.put(
        [
            job("q-fast", route="fast", eta=T0 - 3),
            job("q-slow", route="slow", eta=T0 - 2),
            job("run", route="fast", eta=T0 - 9),
            job("done", route="slow", eta=T0 - 8, result_ttl=1000),
            job("old", route="slow", eta=T0 - 7, result_ttl=10),
            job("s-fast", route="fast", eta=T0 + 50),
            job("r-slow", route="slow", eta=T0 + 40, state="retrying"),
            job("c-fast", route="fast", eta=T0 + 60),
        ],
        now=T0,
    )
    backend.cancel(["c-fast"], T0, "no")
    assert ids(backend.claim(["fast", "slow"], "w", T0, lease=30, limit=3)) == [
        "run",
        "done",
        "old",
    ]
    backend.finish([Outcome("done", "complete"), Outcome("old", "error")], "w", T0)


def test_list_jobs_orders_by_eta_then_put_order(backend):
    _mixed(backend)
    assert ids(backend.list_jobs(T0)) == [
        "run",
        "done",
        "old",
        "q-fast",
        "q-slow",
        "r-slow",
        "s-fast",
        "c-fast",
    ]


def test_list_jobs_filters_by_state_and_route(backend):
    _mixed(backend)
    assert ids(backend.list_jobs(T0, state="queued")) == ["q-fast", "q-slow"]
    assert ids(backend.list_jobs(T0, route="fast")) == ["run", "q-fast", "s-fast", "c-fast"]
    assert ids(backend.list_jobs(T0, state="queued", route="slow")) == ["q-slow"]
    assert ids(backend.list_jobs(T0, state="retrying")) == ["r-slow"]
    assert ids(backend.list_jobs(T0, state="cancelled", route="slow")) == []
    assert backend.list_jobs(T0, route="nowhere") == []


def test_list_jobs_limit(backend):
    _mixed(backend)
    assert ids(backend.list_jobs(T0, limit=2)) == ["run", "done"]
    assert ids(backend.list_jobs(T0, route="slow", limit=2)) == ["done", "old"]


def test_list_jobs_leaves_out_expired_records(backend):
    _mixed(backend)
    assert "old" in ids(backend.list_jobs(T0 + 9))
    assert "old" not in ids(backend.list_jobs(T0 + 10))
    assert ids(backend.list_jobs(T0 + 10, state="error")) == []


def test_stats_counts_unexpired_jobs_per_state_and_route(backend):
    _mixed(backend)
    expected = {
        ("queued", "fast"): 1,
        ("queued", "slow"): 1,
        ("running", "fast"): 1,
        ("complete", "slow"): 1,
        ("error", "slow"): 1,
        ("scheduled", "fast"): 1,
        ("retrying", "slow"): 1,
        ("cancelled", "fast"): 1,
    }
    stats = backend.stats(T0)
    assert stats.counts == expected
    assert stats.next_due == T0 + 40
    del expected[("error", "slow")]
    assert backend.stats(T0 + 10).counts == expected


def test_stats_next_due_is_the_earliest_waiting_eta(backend):
    assert backend.stats(T0).counts == {}
    assert backend.stats(T0).next_due is None
    backend.put([job("run")], now=T0)
    backend.claim(["default"], "w", T0, lease=5)
    assert backend.stats(T0).next_due is None  # a running lease is not a pending eta
    backend.put([job("s", eta=T0 + 30), job("r", eta=T0 + 20, state="retrying")], now=T0)
    assert backend.stats(T0).next_due == T0 + 20
    backend.cancel(["r"], T0, "x")
    assert backend.stats(T0).next_due == T0 + 30
