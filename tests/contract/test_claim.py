"""claim: what is taken, in which order, with which fields, and never twice."""

from __future__ import annotations

from skunkqueue.model import Outcome
from skunkqueue.persistence.rules import MAX_BATCH

from .support import T0, ids, job, lead


def test_claim_sets_running_owner_lease_started_and_deliveries(backend):
    backend.put([job("a", max_deliveries=5)], now=T0)
    [taken] = backend.claim(["default"], "worker-1", T0 + 2, lease=30)
    assert (taken.id, taken.state, taken.owner) == ("a", "running", "worker-1")
    assert taken.lease_until == T0 + 32
    assert taken.started_at == T0 + 2
    assert taken.deliveries == 1
    assert taken.attempts == 0
    stored = backend.get("a", T0 + 2)
    assert (
        stored.state,
        stored.owner,
        stored.lease_until,
        stored.started_at,
        stored.deliveries,
    ) == (
        "running",
        "worker-1",
        T0 + 32,
        T0 + 2,
        1,
    )


def test_claim_on_empty_queue_returns_nothing(backend):
    assert backend.claim(["default"], "w", T0, lease=30) == []
    assert backend.claim([], "w", T0, lease=30) == []


def test_claim_takes_only_queued_jobs(backend):
    backend.put(
        [
            job("scheduled", eta=T0 + 60),
            job("retrying", eta=T0 - 1, state="retrying"),
            job("cancelled", state="cancelled"),
            job("queued"),
        ],
        now=T0,
    )
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10)) == ["queued"]
    assert backend.claim(["default"], "w", T0, lease=30, limit=10) == []
    assert backend.get("scheduled", T0).state == "scheduled"
    assert backend.get("retrying", T0).state == "retrying"


def test_claim_respects_limit(backend):
    backend.put([job(f"j{i}", eta=T0 - 10 + i) for i in range(5)], now=T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=2)) == ["j0", "j1"]
    assert ids(backend.claim(["default"], "w", T0, lease=30)) == ["j2"]
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=100)) == ["j3", "j4"]


def test_claim_orders_by_eta_then_put_order(backend):
    backend.put([job("late", eta=T0 - 1)], now=T0)
    backend.put([job("early", eta=T0 - 9)], now=T0)
    backend.put([job("mid-1", eta=T0 - 5), job("mid-2", eta=T0 - 5)], now=T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10)) == [
        "early",
        "mid-1",
        "mid-2",
        "late",
    ]


def test_claim_only_from_named_routes(backend):
    backend.put([job("a", route="fast"), job("b", route="slow"), job("c", route="bulk")], now=T0)
    assert ids(backend.claim(["slow", "nowhere"], "w", T0, lease=30, limit=10)) == ["b"]
    assert backend.claim(["slow"], "w", T0, lease=30, limit=10) == []
    assert backend.get("a", T0).state == "queued"
    assert backend.get("c", T0).state == "queued"


def test_claim_orders_across_routes(backend):
    backend.put(
        [
            job("f1", route="fast", eta=T0 - 3),
            job("s1", route="slow", eta=T0 - 4),
            job("f2", route="fast", eta=T0 - 2),
            job("s2", route="slow", eta=T0 - 2),
            job("f3", route="fast", eta=T0 - 1),
        ],
        now=T0,
    )
    claimed = backend.claim(["fast", "slow", "fast"], "w", T0, lease=30, limit=4)
    assert ids(claimed) == ["s1", "f1", "f2", "s2"]
    assert ids(backend.claim(["slow", "fast"], "w", T0, lease=30, limit=4)) == ["f3"]


def test_claimed_job_is_not_handed_out_again(backend):
    backend.put([job("a"), job("b")], now=T0)
    first = backend.claim(["default"], "w1", T0, lease=30)
    second = backend.claim(["default"], "w2", T0, lease=30)
    third = backend.claim(["default"], "w3", T0, lease=30)
    assert ids(first) == ["a"] and ids(second) == ["b"] and third == []
    assert backend.get("a", T0).owner == "w1"
    assert backend.get("b", T0).owner == "w2"


def test_promoted_job_becomes_claimable(backend):
    backend.put([job("later", eta=T0 + 10)], now=T0)
    assert backend.claim(["default"], "w", T0 + 20, lease=30) == []  # promote has not run
    backend.sweep(T0 + 20, lead(backend, T0 + 20))
    [taken] = backend.claim(["default"], "w", T0 + 20, lease=30)
    assert (taken.id, taken.eta, taken.deliveries) == ("later", T0 + 10, 1)


def test_promoted_job_keeps_its_put_order_among_equal_etas(backend):
    """A job put earlier leaves earlier, whether it waited in the time index or not."""
    backend.put([job("waited", eta=T0 + 10)], now=T0)
    backend.put([job("direct", eta=T0 + 10)], now=T0 + 20)  # due on arrival: queued at once
    backend.sweep(T0 + 20, lead(backend, T0 + 20))
    assert ids(backend.claim(["default"], "w", T0 + 20, lease=30, limit=2)) == ["waited", "direct"]


def test_the_start_is_recorded_as_it_was_even_before_the_eta(backend):
    """A claim records its own time as the start. A job queued early (by a leader whose
    idea of now ran ahead) and taken at once shows that it started before its eta: the
    record must not hide it."""
    backend.put([job("early", eta=T0 + 5), job("due", eta=T0 - 1)], now=T0)
    backend.sweep(T0 + 5, lead(backend, T0 + 5))
    claimed = {r.id: r for r in backend.claim(["default"], "w", T0 + 4.5, lease=30, limit=5)}
    assert set(claimed) == {"early", "due"}
    assert claimed["early"].started_at == T0 + 4.5
    assert claimed["due"].started_at == T0 + 4.5
    stored = backend.get("early", T0 + 5)
    assert stored is not None and stored.started_at == T0 + 4.5


def test_an_outcome_records_when_the_job_really_started(backend):
    """A batch's later jobs start after their claim: the worker's outcome says when."""
    backend.put([job(name) for name in ("ok", "failed", "again", "unrun")], now=T0)
    backend.claim(["default"], "w", T0 + 1, lease=30, limit=4)
    outcomes = [
        Outcome("ok", "complete", result="1", started_at=T0 + 2),
        Outcome("failed", "error", error={"type": "E"}, started_at=T0 + 3),
        Outcome("again", "retrying", eta=T0 + 60, started_at=T0 + 4),
        Outcome("unrun", "queued"),
    ]
    assert backend.finish(outcomes, "w", T0 + 5) == [True] * 4
    starts = {name: backend.get(name, T0 + 5).started_at for name in ("ok", "failed", "again")}
    assert starts == {"ok": T0 + 2, "failed": T0 + 3, "again": T0 + 4}


# -- max_bytes ----------------------------------------------------------------------


def _sized(*sizes, route="default", start=0):
    """Jobs j<start>, j<start+1>, ... with payloads of the given sizes, in that eta order."""
    return [
        job(f"j{start + i}", route=route, eta=T0 - 100 + start + i, payload="x" * size)
        for i, size in enumerate(sizes)
    ]


def test_max_bytes_always_takes_the_first_job_whatever_its_size(backend):
    backend.put(_sized(5000, 10), now=T0)
    [big] = backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=100)
    assert (big.id, len(big.payload)) == ("j0", 5000)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=0)) == ["j1"]


def test_max_bytes_cuts_the_batch_exactly_at_the_bound(backend):
    backend.put(_sized(10, 10, 10, 10, 10, 10), now=T0)
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=30)) == [
        "j0",
        "j1",
        "j2",
    ]
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=29)) == [
        "j3",
        "j4",
    ]


def test_jobs_left_by_max_bytes_are_untouched_and_taken_first_next(backend):
    backend.put(_sized(10, 40, 1, 1), now=T0)
    backend.put(_sized(1, start=4), now=T0)  # put later, same route
    # j1 does not fit; the smaller jobs behind it are not taken out of order either.
    assert ids(backend.claim(["default"], "w1", T0, lease=30, limit=10, max_bytes=45)) == ["j0"]
    for name in ("j1", "j2", "j3", "j4"):
        left = backend.get(name, T0)
        assert (left.state, left.owner, left.lease_until, left.deliveries, left.started_at) == (
            "queued",
            None,
            None,
            0,
            None,
        ), name
    assert backend.stats(T0).counts == {("running", "default"): 1, ("queued", "default"): 4}
    assert ids(backend.claim(["default"], "w2", T0, lease=30, limit=2, max_bytes=45)) == [
        "j1",
        "j2",
    ]
    assert ids(backend.claim(["default"], "w2", T0, lease=30, limit=10)) == ["j3", "j4"]


def test_max_bytes_keeps_the_order_across_routes(backend):
    backend.put(
        [
            job("f1", route="fast", eta=T0 - 4, payload="x" * 10),
            job("s1", route="slow", eta=T0 - 3, payload="x" * 10),
            job("f2", route="fast", eta=T0 - 2, payload="x" * 10),
            job("s2", route="slow", eta=T0 - 1, payload="x" * 10),
        ],
        now=T0,
    )
    routes = ["fast", "slow"]
    assert ids(backend.claim(routes, "w", T0, lease=30, limit=10, max_bytes=25)) == ["f1", "s1"]
    assert ids(backend.claim(routes, "w", T0, lease=30, limit=10, max_bytes=25)) == ["f2", "s2"]


def test_max_bytes_counts_the_payload_in_utf8_bytes(backend):
    """Every backend measures what it stores: 'é' is one character but two bytes."""
    backend.put(
        [
            job("accented", eta=T0 - 2, payload='"' + "é" * 5 + '"'),  # 12 bytes, 7 characters
            job("plain", eta=T0 - 1, payload='"abcde"'),  # 7 bytes
        ],
        now=T0,
    )
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=18)) == [
        "accented"
    ]
    assert backend.get("accented", T0).payload == '"ééééé"'
    assert ids(backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=18)) == ["plain"]


def test_max_bytes_none_means_no_bound(backend):
    backend.put(_sized(3000, 3000, 3000), now=T0)
    taken = backend.claim(["default"], "w", T0, lease=30, limit=10, max_bytes=None)
    assert ids(taken) == ["j0", "j1", "j2"]


def test_a_claim_takes_at_most_one_batch_whatever_its_limit(backend):
    """One atomic step touches at most ``rules.MAX_BATCH`` records, on every backend."""
    backend.put([job(f"j{i:04}") for i in range(MAX_BATCH + 20)], T0)
    taken = backend.claim(["default"], "w", T0, 30, limit=10**9)
    assert ids(taken) == [f"j{i:04}" for i in range(MAX_BATCH)]
    assert len(backend.claim(["default"], "w", T0, 30, limit=10**9)) == 20
