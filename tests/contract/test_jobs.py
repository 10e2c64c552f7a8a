"""put and get: states on arrival, idempotent ids, ordering by put, atomic batches."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from skunkqueue.jobs import JobRecord, Outcome
from skunkqueue.persistence.fdb import PUT_BYTES
from skunkqueue.persistence.redis import PUT_CHUNK

from .support import T0, ids, job, lead


def test_put_stores_due_jobs_queued_and_future_jobs_scheduled(backend):
    answers = backend.put(
        [job("past", eta=T0 - 5), job("now", eta=T0), job("later", eta=T0 + 5)], now=T0
    )
    assert answers == [True, True, True]
    assert backend.get("past", T0).state == "queued"
    assert backend.get("now", T0).state == "queued"
    assert backend.get("later", T0).state == "scheduled"


def test_put_keeps_retrying_and_cancelled_states_given_by_caller(backend):
    backend.put(
        [
            job("r-past", eta=T0 - 1, state="retrying"),
            job("r-future", eta=T0 + 10, state="retrying"),
            job("c", eta=T0 + 10, state="cancelled", error={"reason": "imported"}),
        ],
        now=T0,
    )
    assert backend.get("r-past", T0).state == "retrying"
    assert backend.get("r-future", T0).state == "retrying"
    cancelled = backend.get("c", T0)
    assert cancelled.state == "cancelled"
    assert cancelled.error == {"reason": "imported"}


def test_put_ignores_other_caller_states(backend):
    backend.put([job("a", state="complete"), job("b", eta=T0 + 9, state="queued")], now=T0)
    assert backend.get("a", T0).state == "queued"
    assert backend.get("b", T0).state == "scheduled"


def test_get_round_trips_every_field(backend):
    original = job(
        "full",
        route="emails",
        eta=T0 + 30,
        event="mail.send",
        payload='{"to": "a@example.com", "n": [1, 2.5, null]}',
        serializer="pickle",
        created_at=T0 - 1,
        max_deliveries=7,
        result_ttl=123.5,
        timeout=9.25,
        retry={"max_retries": 4, "backoff": [1, 2, 4], "jitter": 0.5},
        schedule="nightly",
        parent="root-job",
    )
    assert backend.put([original], now=T0) == [True]
    stored = backend.get("full", T0)
    assert stored is not None
    assert stored.state == "scheduled"
    for f in dataclasses.fields(JobRecord):
        if f.name not in ("state", "seq"):  # decided by the backend
            assert getattr(stored, f.name) == getattr(original, f.name), f.name
    assert isinstance(stored.seq, int)


def test_get_unknown_id_is_none(backend):
    assert backend.get("nope", T0) is None


def test_put_existing_id_is_refused_and_leaves_the_job_untouched(backend):
    assert backend.put([job("dup", eta=T0 + 100, payload='"first"')], now=T0) == [True]
    again = backend.put(
        [job("dup", eta=T0, payload='"second"', route="other"), job("fresh")], now=T0 + 1
    )
    assert again == [False, True]
    stored = backend.get("dup", T0 + 1)
    assert (stored.payload, stored.route, stored.eta, stored.state) == (
        '"first"',
        "default",
        T0 + 100,
        "scheduled",
    )


def test_put_duplicate_ids_within_one_call(backend):
    answers = backend.put([job("x", payload='"one"'), job("x", payload='"two"')], now=T0)
    assert answers == [True, False]
    assert backend.get("x", T0).payload == '"one"'
    assert ids(backend.list_jobs(T0)) == ["x"]


def test_put_refuses_an_id_that_is_running_or_finished(backend):
    backend.put([job("a"), job("b")], now=T0)
    backend.claim(["default"], "w", T0, lease=30, limit=2)
    backend.finish([Outcome("b", "complete", result="1")], "w", T0 + 1)
    assert backend.put([job("a"), job("b")], now=T0 + 2) == [False, False]
    assert backend.get("a", T0 + 2).state == "running"
    assert backend.get("b", T0 + 2).state == "complete"


def test_put_reuses_an_id_once_its_record_has_expired(backend):
    backend.put([job("a", result_ttl=10)], now=T0)
    backend.claim(["default"], "w", T0, lease=30)
    backend.finish([Outcome("a", "complete", result='"old"')], "w", T0)
    assert backend.put([job("a", payload='"new"')], now=T0 + 5) == [False]
    # expired at T0 + 10: the id is free again even before promote deletes the record
    assert backend.put([job("a", payload='"new"', eta=T0 + 20)], now=T0 + 10) == [True]
    fresh = backend.get("a", T0 + 10)
    assert (fresh.state, fresh.payload, fresh.result, fresh.attempts, fresh.expires_at) == (
        "scheduled",
        '"new"',
        None,
        0,
        None,
    )


def test_reused_id_leaves_after_jobs_put_before_it(backend):
    """seq follows put order, also for an id reused after its old record expired."""
    backend.put([job("old", result_ttl=10)], now=T0)
    backend.claim(["default"], "w", T0, lease=30)
    backend.finish([Outcome("old", "complete")], "w", T0)
    backend.put([job("first", eta=T0 + 50)], now=T0 + 20)
    backend.put([job("old", eta=T0 + 50)], now=T0 + 20)
    backend.put([job("last", eta=T0 + 50)], now=T0 + 20)
    claimed = backend.claim(["default"], "w2", T0 + 60, lease=30, limit=3)
    assert claimed == []  # still scheduled: promote has not run
    backend.sweep(T0 + 60, lead(backend, T0 + 60))
    assert ids(backend.claim(["default"], "w2", T0 + 60, lease=30, limit=3)) == [
        "first",
        "old",
        "last",
    ]


def test_equal_etas_leave_in_put_order(backend):
    for name in ["c", "a", "d", "b"]:
        backend.put([job(name, eta=T0 - 1)], now=T0)
    backend.put([job("e", eta=T0 - 1), job("f", eta=T0 - 1)], now=T0)
    claimed = backend.claim(["default"], "w", T0, lease=30, limit=10)
    assert ids(claimed) == ["c", "a", "d", "b", "e", "f"]


def test_put_refuses_a_malformed_record_before_writing_any(backend):
    broken = job("broken", payload=threading.Lock())  # neither copyable nor storable
    with pytest.raises(Exception):  # noqa: B017 - the contract names no error type
        backend.put([job("ok-1"), broken, job("ok-2")], now=T0)
    assert backend.get("ok-1", T0) is None
    assert backend.get("ok-2", T0) is None
    assert backend.list_jobs(T0) == []
    assert backend.put([job("ok-1")], now=T0) == [True]


def test_putting_a_call_again_completes_it_and_leaves_what_was_stored(backend):
    """A call larger than every backend's atomic unit, part of which is stored already, as
    a failure part-way leaves it (any part: a prefix, or more on Redis and MongoDB).
    Putting the whole call again answers False for the stored ids and leaves their records
    as they were, stores each of the others once, and keeps put order among them."""
    jobs = [job(f"j{i:03}", payload=f'"{i:05000}"') for i in range(250)]
    assert len(jobs) > 2 * PUT_CHUNK and sum(len(j.payload) for j in jobs) > PUT_BYTES
    before = set(range(130)) | set(range(200, 210))
    earlier = [dataclasses.replace(jobs[i], payload='"earlier"') for i in sorted(before)]
    assert backend.put(earlier, T0) == [True] * len(earlier)
    stored = {r.id: r for r in backend.list_jobs(T0, limit=len(jobs))}

    assert backend.put(jobs, T0) == [i not in before for i in range(len(jobs))]
    for job_id, record in stored.items():
        assert backend.get(job_id, T0) == record
    rest = [j.id for i, j in enumerate(jobs) if i not in before]
    assert ids(backend.list_jobs(T0, limit=len(jobs) + 1)) == [*stored, *rest]
    assert backend.stats(T0).counts == {("queued", "default"): len(jobs)}


def test_records_are_snapshots_not_shared_objects(backend):
    original = job("snap", retry={"max_retries": 1})
    backend.put([original], now=T0)
    original.payload = "mutated after put"
    original.retry["max_retries"] = 99
    got = backend.get("snap", T0)
    assert got.payload == '{"args": [1, 2]}'
    assert got.retry == {"max_retries": 1}
    got.state = "complete"
    got.retry["max_retries"] = 42
    again = backend.get("snap", T0)
    assert (again.state, again.retry) == ("queued", {"max_retries": 1})


def test_queues_on_one_store_are_isolated(store):
    mine, theirs = store.open(), store.open(queue=store.queue + "-other")
    mine.put([job("shared-id", payload='"mine"')], now=T0)
    assert theirs.get("shared-id", T0) is None
    assert theirs.put([job("shared-id", payload='"theirs"')], now=T0) == [True]
    assert mine.get("shared-id", T0).payload == '"mine"'
    assert theirs.claim(["default"], "w", T0, lease=30)[0].payload == '"theirs"'
    assert mine.get("shared-id", T0).state == "queued"
    assert theirs.stats(T0).counts == {("running", "default"): 1}
    assert mine.stats(T0).counts == {("queued", "default"): 1}


def test_two_instances_of_one_queue_see_the_same_jobs(store):
    first, second = store.open(), store.open()
    first.put([job("a")], now=T0)
    assert second.get("a", T0) is not None
    assert ids(second.claim(["default"], "w", T0, lease=30)) == ["a"]
    assert first.get("a", T0).owner == "w"
