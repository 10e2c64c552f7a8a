"""Redis scripts under records that were deleted or corrupted behind their back.

Each test stores jobs or leases through the backend, then breaks one record with a plain
Redis client the way an operator, an eviction policy or another program could (the hash
deleted while an index still names it, a field that no longer parses, an unknown state,
a key of another type), and calls the verb whose script meets it. A script must read and
check everything before its first write (Redis does not roll a script back): the broken
record is never written or deleted, no stub record appears, the good records around it
still move, the call reports what it passed over, and no Lua error stops it part-way.
Runs against the session's real redis-server.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.jobs import Outcome
from skunkqueue.persistence import Backend, ScheduleRecord, open_backend
from skunkqueue.persistence.base import SCHEDULER_LEASE

from .contract.support import T0, ids, job, lead
from .drivers import require

redis = require("redis")

#: A change that replaces a record's hash with a string: a key of another type.
WRONG_TYPE = "a string where the hash was"


@dataclass
class Store:
    """A fresh queue on the session's Redis: the backend, and a plain client beside it."""

    backend: Backend
    client: Any
    prefix: str

    def key(self, name: str) -> str:
        return self.prefix + name

    def raw(self, name: str) -> Any:
        """A key's type and whole value, to compare before and after a call."""
        key = self.key(name)
        kind = self.client.type(key)
        read = {
            "none": lambda: None,
            "string": lambda: self.client.get(key),
            "hash": lambda: self.client.hgetall(key),
            "zset": lambda: self.client.zrange(key, 0, -1, withscores=True),
            "set": lambda: sorted(self.client.smembers(key)),
            "list": lambda: self.client.lrange(key, 0, -1),
        }[kind]
        return kind, read()

    def everything(self) -> dict[str, Any]:
        """Every key of the queue, as ``raw`` gives it."""
        names = [k[len(self.prefix) :] for k in self.client.scan_iter(f"{self.prefix}*")]
        return {name: self.raw(name) for name in sorted(names)}

    def break_job(self, job_id: str, change: dict[str, str | None] | str) -> Any:
        """Corrupt job ``job_id``'s record (a field set to a value, or removed with None;
        or WRONG_TYPE); its raw form afterwards."""
        key = self.key(f"j:{job_id}")
        if change == WRONG_TYPE:
            self.client.delete(key)
            self.client.set(key, "not a record")
        else:
            for field, value in change.items():
                if value is None:
                    self.client.hdel(key, field)
                else:
                    self.client.hset(key, field, value)
        return self.raw(f"j:{job_id}")

    def indexed(self, index: str) -> list[str]:
        """The ids an index names, in its order (members of a ready or scheduled index
        carry their seq before a '|')."""
        return [m.split("|", 1)[-1] for m in self.client.zrange(self.key(index), 0, -1)]

    def quarantined(self) -> list[str]:
        return self.client.zrange(self.key("quarantine"), 0, -1)


@pytest.fixture
def store(redis_server) -> Iterator[Store]:
    queue = f"faults-{uuid.uuid4().hex[:10]}"
    backend = open_backend(redis_server.url, queue)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield Store(backend, client, f"sq:{{{queue}}}:")
    finally:
        backend.close()
        client.close()


def passed_over(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The WARNING lines of the Redis backend that name record ``name``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "skunkqueue.redis" and r.levelno == logging.WARNING and name in r.getMessage()
    ]


#: Records that do not parse, each as ``Store.break_job`` takes it.
MALFORMED = {
    "unknown state": {"s": "paused"},
    "eta not a number": {"t": "soon"},
    "no route": {"r": None},
    "seq not an integer": {"q": "first"},
    "not a hash": WRONG_TYPE,
}


# -- sweep ----------------------------------------------------------------------------


def test_sweep_drops_a_due_entry_whose_record_is_gone_and_writes_no_stub(store, caplog):
    """The issue's defect: sweep wrote 's queued' into the missing hash before it looked,
    leaving a stub record that broke every later sweep."""
    store.backend.put([job("gone", eta=T0 + 5), job("good", eta=T0 + 6)], T0)
    store.client.delete(store.key("j:gone"))
    fence = lead(store.backend, T0, ttl=1000)

    report = store.backend.sweep(T0 + 10, fence)

    assert (report.promoted, report.skipped, report.more) == (1, 1, False)
    assert store.raw("j:gone") == ("none", None)
    assert store.indexed("scheduled") == []
    assert store.backend.get("good", T0 + 10).state == "queued"
    assert passed_over(caplog, "j:gone")
    again = store.backend.sweep(T0 + 11, fence)
    assert (again.promoted, again.skipped, again.more) == (0, 0, False)


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_sweep_quarantines_a_malformed_due_record_and_promotes_the_rest(store, change):
    store.backend.put([job("bad", eta=T0 + 1), job("good", eta=T0 + 2)], T0)
    broken = store.break_job("bad", change)
    fence = lead(store.backend, T0, ttl=1000)

    report = store.backend.sweep(T0 + 10, fence)

    assert store.raw("j:bad") == broken  # never rewritten
    assert store.quarantined() == ["j:bad"]
    assert (report.promoted, report.skipped) == (1, 1)
    assert store.indexed("scheduled") == []
    assert store.indexed("ready:default") == ["good"]


def test_a_malformed_head_does_not_keep_sweep_busy(store):
    """At limit 1 the bad head is looked at once, set aside, and the job behind it moves
    on the next call; then ``more`` goes quiet."""
    store.backend.put([job("bad", eta=T0 + 1), job("good", eta=T0 + 2)], T0)
    broken = store.break_job("bad", {"s": "paused"})
    fence = lead(store.backend, T0, ttl=1000)

    reports = [store.backend.sweep(T0 + 10, fence, limit=1) for _ in range(3)]

    assert store.raw("j:bad") == broken
    assert [(r.promoted, r.skipped, r.more) for r in reports] == [
        (0, 1, True),
        (1, 0, True),
        (0, 0, False),
    ]
    assert store.indexed("ready:default") == ["good"]


@pytest.mark.parametrize(
    "change",
    [{"d": "several"}, {"m": "3.5"}, {"a": "none"}, {"k": "a day"}, {"t": None}, WRONG_TYPE],
    ids=["deliveries", "max_deliveries", "attempts", "result_ttl", "no eta", "not a hash"],
)
def test_sweep_quarantines_a_lapsed_record_it_cannot_recover(store, change):
    store.backend.put([job("bad"), job("good")], T0)
    store.backend.claim(["default"], "w", T0, 30, limit=2)
    broken = store.break_job("bad", change)
    fence = lead(store.backend, T0, ttl=1000)

    report = store.backend.sweep(T0 + 60, fence)

    assert store.raw("j:bad") == broken
    assert store.quarantined() == ["j:bad"]
    assert (report.recovered, report.skipped) == (1, 1)
    assert store.indexed("running") == []
    assert store.client.smembers(store.key("held:w")) == {"bad"}  # only renew walks it
    assert store.backend.get("good", T0 + 60).state == "queued"


def test_sweep_never_deletes_a_malformed_expired_record(store):
    store.backend.put([job("bad", result_ttl=10), job("good", result_ttl=10)], T0)
    taken = store.backend.claim(["default"], "w", T0, 30, limit=2)
    store.backend.finish([Outcome(j.id, "complete") for j in taken], "w", T0)
    broken = store.break_job("bad", {"s": "archived"})
    fence = lead(store.backend, T0, ttl=1000)

    report = store.backend.sweep(T0 + 20, fence)

    assert store.raw("j:bad") == broken
    assert store.raw("j:good") == ("none", None)
    assert store.quarantined() == ["j:bad"]
    assert (report.expired, report.skipped) == (1, 1)
    assert store.indexed("expiry") == []


def test_sweep_drops_a_due_entry_whose_record_has_moved_on(store):
    """A scheduled entry left behind by a job a worker runs now: queuing it again would
    hand it to a second worker. The entry goes; the record stays as it is."""
    store.backend.put([job("moved"), job("later", eta=T0 + 5)], T0)
    seq = store.client.hget(store.key("j:moved"), "q")
    assert ids(store.backend.claim(["default"], "w", T0, 30)) == ["moved"]
    store.client.zadd(store.key("scheduled"), {f"{len(seq)}{seq}|moved": T0 + 1})
    before = store.raw("j:moved")
    fence = lead(store.backend, T0, ttl=1000)

    report = store.backend.sweep(T0 + 10, fence)

    assert store.raw("j:moved") == before
    assert (report.promoted, report.skipped) == (1, 1)
    assert store.indexed("ready:default") == ["later"]
    assert store.indexed("running") == ["moved"]
    assert store.quarantined() == []


@pytest.mark.parametrize(
    "change",
    [{"u": "soon"}, {"n": "seven"}, {"i": "{not json"}, WRONG_TYPE, "deleted"],
    ids=["until", "token", "info", "not a hash", "deleted"],
)
def test_sweep_under_a_broken_lease_is_lease_lost_and_writes_nothing(store, change):
    store.backend.put([job("due", eta=T0 + 1)], T0)
    fence = lead(store.backend, T0, ttl=1000)
    key = store.key(f"lease:{SCHEDULER_LEASE}")
    if change == "deleted":
        store.client.delete(key)
    elif change == WRONG_TYPE:
        store.client.delete(key)
        store.client.set(key, "leader")
    else:
        store.client.hset(key, mapping=change)
    before = store.everything()

    with pytest.raises(LeaseLost):
        store.backend.sweep(T0 + 10, fence)

    assert store.everything() == before


# -- claim ----------------------------------------------------------------------------


def test_claim_passes_over_a_missing_record_to_the_job_behind_it(store, caplog):
    store.backend.put([job("gone"), job("good")], T0)
    store.client.delete(store.key("j:gone"))

    taken = store.backend.claim(["default"], "w", T0, 30, limit=1)

    assert ids(taken) == ["good"]
    assert store.raw("j:gone") == ("none", None)
    assert store.indexed("ready:default") == []
    assert store.indexed("running") == ["good"]
    assert passed_over(caplog, "j:gone")


CLAIM_MALFORMED = {
    **MALFORMED,
    "deliveries not an integer": {"d": "once"},
    "no payload": {"p": None},
    "retry not JSON": {"rt": "{'max_attempts': 3}"},
    "unknown field": {"zz": "1"},
    "timeout not a number": {"tm": "0x10"},
}


@pytest.mark.parametrize("change", CLAIM_MALFORMED.values(), ids=CLAIM_MALFORMED.keys())
def test_claim_quarantines_a_malformed_record_and_takes_the_job_behind_it(store, change):
    """A claim hands every field to Python: a record that would not decode is never
    taken, and a limit-1 claim still returns the good job waiting behind it."""
    store.backend.put([job("bad"), job("good")], T0)
    broken = store.break_job("bad", change)

    taken = store.backend.claim(["default"], "w", T0, 30, limit=1)

    assert ids(taken) == ["good"]
    assert taken[0].state == "running" and taken[0].deliveries == 1
    assert store.raw("j:bad") == broken
    assert store.quarantined() == ["j:bad"]
    assert store.indexed("ready:default") == []
    assert store.indexed("running") == ["good"]
    assert store.client.smembers(store.key("held:w")) == {"good"}
    assert store.client.hgetall(store.key("counts")) == {
        "queued|default": "1",  # the quarantined record keeps its count
        "running|default": "1",
    }


def test_claim_drops_an_entry_whose_record_another_worker_holds(store):
    """A ready entry left behind by a record that is running: taking it again would hand
    one job to two workers."""
    store.backend.put([job("held"), job("good")], T0)
    member = store.client.zrange(store.key("ready:default"), 0, 0)[0]
    assert store.backend.claim(["default"], "first", T0, 30, limit=1)[0].id == "held"
    store.client.zadd(store.key("ready:default"), {member: T0})
    before = store.raw("j:held")

    taken = store.backend.claim(["default"], "second", T0, 30, limit=1)

    assert ids(taken) == ["good"]
    assert store.raw("j:held") == before
    assert store.indexed("ready:default") == []
    assert store.quarantined() == []


def test_a_claim_that_passes_over_its_budget_hands_the_wake_up_on(store):
    """250 entries passed over is a call's most; the route's wake token stays so that a
    worker claims again at once, and the next claim reaches the good job."""
    bad = [job(f"bad{i:03}") for i in range(260)]
    store.backend.put([*bad, job("good")], T0)
    pipe = store.client.pipeline()
    for record in bad:
        pipe.hset(store.key(f"j:{record.id}"), "s", "paused")
    pipe.execute()
    store.client.delete(store.key("wake:default"))

    assert store.backend.claim(["default"], "w", T0, 30, limit=1) == []
    assert store.client.lrange(store.key("wake:default"), 0, -1) == ["1"]
    assert ids(store.backend.claim(["default"], "w", T0, 30, limit=1)) == ["good"]
    assert len(store.quarantined()) == 260


def test_claim_keeps_leaving_order_across_routes_past_entries_it_passes_over(store):
    """Passed-over entries are replaced from the next windows of every route before the
    walk goes on, so the jobs taken are still the earliest of all the routes."""
    store.backend.put([job(f"a-bad{i}", route="a", eta=T0 + i) for i in range(3)], T0 + 10)
    store.backend.put([job("a-late", route="a", eta=T0 + 8)], T0 + 10)
    store.backend.put([job(f"b{i}", route="b", eta=T0 + 4 + 2 * i) for i in range(3)], T0 + 10)
    for i in range(3):
        store.break_job(f"a-bad{i}", {"t": "soon"})

    taken = store.backend.claim(["a", "b"], "w", T0 + 10, 30, limit=3)

    assert ids(taken) == ["b0", "b1", "a-late"]


# -- put ------------------------------------------------------------------------------

PUT_MALFORMED = {
    "expiry not a number": {"x": "tomorrow"},
    "expired, unknown state": {"x": repr(T0 - 1), "s": "paused"},
    "expired, no route": {"x": repr(T0 - 1), "r": None},
    "not a hash": WRONG_TYPE,
}


@pytest.mark.parametrize("change", PUT_MALFORMED.values(), ids=PUT_MALFORMED.keys())
def test_put_never_replaces_a_malformed_record_and_stores_the_others(store, change, caplog):
    store.backend.put([job("bad", eta=T0 - 20)], T0 - 10)
    broken = store.break_job("bad", change)

    answers = store.backend.put([job("first"), job("bad"), job("last")], T0)

    assert answers == [True, False, True]
    assert store.raw("j:bad") == broken
    assert store.indexed("ready:default") == ["bad", "first", "last"]
    assert passed_over(caplog, "j:bad")


@pytest.mark.parametrize(
    "key, value",
    [("counts", {"queued|default": "many"}), ("ready:default", "a string"), ("seq", "ten")],
    ids=["count not an integer", "index of another type", "seq not an integer"],
)
def test_put_into_a_broken_index_writes_nothing_and_says_which_key(store, key, value):
    store.backend.put([job("first")], T0)
    if isinstance(value, dict):
        store.client.hset(store.key(key), mapping=value)
    else:
        store.client.delete(store.key(key))
        store.client.set(store.key(key), value)
    before = store.everything()

    with pytest.raises(redis.exceptions.ResponseError) as raised:
        store.backend.put([job("second"), job("third", eta=T0 + 5)], T0)

    assert store.everything() == before
    assert str(raised.value).startswith(f"SQ_CORRUPT {store.key(key)} ")


# -- renew ----------------------------------------------------------------------------


def test_renew_of_named_jobs_skips_a_malformed_record_and_renews_the_others(store):
    store.backend.put([job("good"), job("bad")], T0)
    store.backend.claim(["default"], "w", T0, 30, limit=2)
    broken = store.break_job("bad", WRONG_TYPE)

    assert store.backend.renew("w", T0 + 10, 30, ["good", "bad"]) == {"good"}

    assert store.raw("j:bad") == broken
    assert store.backend.get("good", T0 + 10).lease_until == T0 + 40
    assert store.client.zscore(store.key("running"), "good") == T0 + 40


def test_renew_walking_the_held_set_quarantines_a_malformed_record(store):
    store.backend.put([job("good"), job("bad")], T0)
    store.backend.claim(["default"], "w", T0, 30, limit=2)
    broken = store.break_job("bad", {"s": "paused"})
    store.client.sadd(store.key("held:w"), "gone")

    assert store.backend.renew("w", T0 + 10, 30) == {"good"}

    assert store.raw("j:bad") == broken
    assert store.quarantined() == ["j:bad"]
    assert store.client.smembers(store.key("held:w")) == {"good"}
    assert store.raw("j:gone") == ("none", None)


def test_renew_with_the_lease_index_of_another_type_writes_nothing(store):
    store.backend.put([job("a")], T0)
    store.backend.claim(["default"], "w", T0, 30)
    store.client.delete(store.key("running"))
    store.client.set(store.key("running"), "a string")
    before = store.everything()

    with pytest.raises(redis.exceptions.ResponseError) as raised:
        store.backend.renew("w", T0 + 10, 30, ["a"])

    assert store.everything() == before
    assert str(raised.value).startswith(f"SQ_CORRUPT {store.key('running')} ")


# -- finish ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, change",
    [
        ("complete", {"a": "once"}),
        ("complete", {"k": "a day"}),
        ("retrying", {"q": None}),
        ("queued", {"d": "once"}),
        ("queued", {"t": "soon"}),
        ("error", WRONG_TYPE),
    ],
    ids=["attempts", "result_ttl", "no seq", "deliveries", "eta", "not a hash"],
)
def test_finish_leaves_a_malformed_record_as_it_is_and_records_the_others(
    store, state, change, caplog
):
    store.backend.put([job("good"), job("bad")], T0)
    store.backend.claim(["default"], "w", T0, 30, limit=2)
    broken = store.break_job("bad", change)
    error = None if state in ("complete", "queued") else {"type": "E", "message": "m"}
    outcomes = [
        Outcome(i, state, error=error, eta=T0 + 50 if state == "retrying" else None)
        for i in ("good", "bad")
    ]

    assert store.backend.finish(outcomes, "w", T0 + 1) == [True, False]

    assert store.raw("j:bad") == broken
    assert store.indexed("running") == ["bad"]
    assert store.client.smembers(store.key("held:w")) == {"bad"}
    assert store.backend.get("good", T0 + 1).state == state
    assert passed_over(caplog, "j:bad")


# -- release --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, started",
    [({"m": "three"}, True), ({"d": "once"}, False), ({"s": "paused"}, True)],
    ids=["max_deliveries", "deliveries", "unknown state"],
)
def test_release_quarantines_a_record_it_cannot_hand_back(store, change, started):
    store.backend.put([job("good"), job("bad")], T0)
    store.backend.claim(["default"], "dead", T0, 30, limit=2)
    broken = store.break_job("bad", change)

    released = store.backend.release("dead", T0 + 1, started=["good", "bad"] if started else [])

    assert released == {"good": "queued"}
    assert store.raw("j:bad") == broken
    assert store.quarantined() == ["j:bad"]
    assert store.raw("held:dead") == ("none", None)
    assert store.indexed("running") == ["bad"]  # sweep meets it once its lease lapses


# -- cancel ---------------------------------------------------------------------------


def test_cancel_leaves_malformed_records_as_they_are_and_cancels_the_others(store):
    store.backend.put([job("good", eta=T0 + 5), job("no-route", eta=T0 + 5), job("ttl")], T0)
    no_route = store.break_job("no-route", {"r": None})
    ttl = store.break_job("ttl", {"k": "a day"})

    answers = store.backend.cancel(["good", "no-route", "ttl", "unknown"], T0, "no longer")

    assert answers == [True, False, False, False]
    assert (store.raw("j:no-route"), store.raw("j:ttl")) == (no_route, ttl)
    assert store.indexed("scheduled") == ["no-route"]
    assert store.indexed("ready:default") == ["ttl"]
    assert store.backend.get("good", T0).state == "cancelled"


# -- stats ----------------------------------------------------------------------------


def test_stats_reads_past_a_malformed_expired_record_and_counts_the_quarantine(store, caplog):
    store.backend.put([job("bad", result_ttl=10), job("good", result_ttl=10), job("q")], T0)
    taken = store.backend.claim(["default"], "w", T0, 30, limit=2)
    store.backend.finish([Outcome(j.id, "complete") for j in taken], "w", T0)
    store.break_job("bad", {"r": None})

    stats = store.backend.stats(T0 + 20)

    assert stats.counts == {("queued", "default"): 1, ("complete", "default"): 1}
    assert stats.quarantined == 0
    assert passed_over(caplog, "j:bad")
    store.backend.sweep(T0 + 20, lead(store.backend, T0 + 20))
    assert store.backend.stats(T0 + 20).quarantined == 1


# -- leases -----------------------------------------------------------------------------

BROKEN_LEASES = {
    "token": {"n": "seven"},
    "until": {"u": "soon"},
    "info": {"i": "{not json"},
    "no owner": {"o": None},
    "not a hash": WRONG_TYPE,
}


def break_lease(store: Store, name: str, change: dict[str, str | None] | str) -> Any:
    key = store.key(f"lease:{name}")
    if change == WRONG_TYPE:
        store.client.delete(key)
        store.client.set(key, "leader")
    else:
        for field, value in change.items():
            if value is None:
                store.client.hdel(key, field)
            else:
                store.client.hset(key, field, value)
    return store.raw(f"lease:{name}")


@pytest.mark.parametrize("change", BROKEN_LEASES.values(), ids=BROKEN_LEASES.keys())
def test_acquire_lease_refuses_a_broken_lease_with_an_error_naming_it(store, change):
    store.backend.acquire_lease(SCHEDULER_LEASE, "old", T0, 10)
    broken = break_lease(store, SCHEDULER_LEASE, change)

    with pytest.raises(redis.exceptions.ResponseError) as raised:
        store.backend.acquire_lease(SCHEDULER_LEASE, "new", T0 + 60, 10)

    assert store.raw(f"lease:{SCHEDULER_LEASE}") == broken
    assert str(raised.value).startswith(f"SQ_CORRUPT {store.key('lease:scheduler')} ")


@pytest.mark.parametrize("change", BROKEN_LEASES.values(), ids=BROKEN_LEASES.keys())
def test_release_lease_never_writes_over_a_broken_lease(store, change):
    store.backend.acquire_lease(SCHEDULER_LEASE, "me", T0, 10)
    broken = break_lease(store, SCHEDULER_LEASE, change)

    with pytest.raises(redis.exceptions.ResponseError) as raised:
        store.backend.release_lease(SCHEDULER_LEASE, "me")

    assert store.raw(f"lease:{SCHEDULER_LEASE}") == broken
    assert str(raised.value).startswith(f"SQ_CORRUPT {store.key('lease:scheduler')} ")


def test_forget_leases_sets_a_broken_lease_aside_and_forgets_the_ended_ones(store):
    for name in ("worker:a", "worker:b", "worker:c", "worker:d"):
        store.backend.acquire_lease(name, name, T0, 10)
    broken = break_lease(store, "worker:b", {"u": "soon"})
    store.client.delete(store.key("lease:worker:d"))

    assert store.backend.forget_leases("worker:", T0 + 100) == 2

    assert store.raw("lease:worker:a") == store.raw("lease:worker:c") == ("none", None)
    assert store.raw("lease:worker:b") == broken
    assert store.client.zrange(store.key("leases"), 0, -1) == []
    assert store.quarantined() == ["lease:worker:b"]
    assert store.backend.leases("worker:", T0) == []


@pytest.mark.parametrize("change", BROKEN_LEASES.values(), ids=BROKEN_LEASES.keys())
def test_leases_lists_the_others_past_a_broken_lease(store, change, caplog):
    for name in ("worker:a", "worker:b", "worker:c"):
        store.backend.acquire_lease(name, name, T0, 10, {"routes": ["r"]})
    break_lease(store, "worker:b", change)

    assert [lease.name for lease in store.backend.leases("worker:", T0)] == ["worker:a", "worker:c"]

    assert passed_over(caplog, "lease:worker:b")


def test_a_fenced_save_schedule_under_a_broken_lease_is_lease_lost(store):
    fence = lead(store.backend, T0, ttl=1000)
    break_lease(store, SCHEDULER_LEASE, {"u": "soon"})
    schedule = ScheduleRecord("tick", {"every": 60}, {"event": "tests.tick"}, T0 + 60, T0)

    with pytest.raises(LeaseLost):
        store.backend.save_schedule(schedule, T0 + 1, fence)

    assert store.raw("schedules") == ("none", None)


def test_remove_schedule_removes_a_schedule_whatever_its_stored_text(store):
    store.client.hset(store.key("schedules"), "garbled", "{not json")

    assert store.backend.remove_schedule("garbled") is True
    assert store.raw("schedules") == ("none", None)


def test_status_warns_of_quarantined_records(store, redis_server, capsys):
    from skunkqueue.cli import main

    store.backend.put([job("bad"), job("good")], T0)
    store.break_job("bad", {"t": "soon"})
    store.backend.claim(["default"], "w", T0, 30)
    queue = store.prefix[len("sq:{") : -len("}:")]

    assert main(["status", "-q", queue, "--url", redis_server.url]) == 0

    out = capsys.readouterr().out
    assert "WARNING: quarantined records: 1 (malformed" in out


# -- retry ----------------------------------------------------------------------------


def _errored(store: Store, names: list[str]) -> None:
    store.backend.put([job(n, result_ttl=100) for n in names], T0)
    store.backend.claim(["default"], "w", T0, lease=30, limit=len(names))
    error = {"type": "E", "message": "m"}
    store.backend.finish([Outcome(n, "error", error=error) for n in names], "w", T0 + 1)


def test_retry_leaves_malformed_records_as_they_are_and_retries_the_others(store, caplog):
    _errored(store, ["good", "history", "expiry", "no-route"])
    broken = {
        "history": store.break_job("history", {"hi": "[not json"}),
        "expiry": store.break_job("expiry", {"x": "later"}),
        "no-route": store.break_job("no-route", {"r": None}),
    }
    answers = store.backend.retry(["good", *broken, "unknown"], T0 + 2)
    assert answers == [True, False, False, False, False]
    assert {name: store.raw(f"j:{name}") for name in broken} == broken
    assert store.indexed("ready:default") == ["good"]
    for name in broken:
        assert passed_over(caplog, f"j:{name}"), name


def test_retry_with_a_broken_seq_writes_nothing_and_says_which_key(store):
    _errored(store, ["a"])
    store.client.set(store.key("seq"), "many")
    before = store.everything()
    with pytest.raises(redis.exceptions.ResponseError, match=r"SQ_CORRUPT .*seq is not an integer"):
        store.backend.retry(["a"], T0 + 2)
    assert store.everything() == before
