"""Random sequences of the contract's verbs, on every backend, against the memory backend
as the oracle (Hypothesis).

Each example opens a fresh queue on the backend under test and on a memory store, drives
both through the same puts, claims, renewals, outcomes, cancels, retries by hand,
releases, promotions and clock steps, and after every step requires the same answers and the same records. After
every step it also checks invariants that hold on their own: every job is in exactly one
state, none is lost, a running job has an owner and a live or lapsed lease, and the
counts equal the listings.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skunkqueue.jobs import JobRecord, JobState, Outcome
from skunkqueue.persistence import Backend, open_backend

from .support import job, lead

# The fake clock starts a day ahead of the real one, not at support.T0 (2023): MongoDB's TTL
# monitor deletes records by the real clock, and must not take one this test still reads.
START = float(int(time.time())) + 86400.0
ROUTES = ["a", "b"]
OWNERS = ["w1", "w2"]
STATES = [s.value for s in JobState]

# Fewer examples where each costs more: the MongoDB stand-in does tens of operations a second.
EXAMPLES = {"mongodb": 8, "redis+cluster": 15}
DEFAULT_EXAMPLES = 50

put = st.tuples(
    st.just("put"),
    st.integers(1, 3),
    st.sampled_from([-5.0, 0.0, 5.0, 30.0]),
    st.sampled_from(ROUTES),
    st.sampled_from([30.0, 86400.0]),
)
claim = st.tuples(
    st.just("claim"),
    st.sampled_from([["a"], ["b"], ["a", "b"]]),
    st.sampled_from(OWNERS),
    st.integers(1, 4),
    st.sampled_from([5.0, 20.0]),
)
# Puts and claims come twice as often as the rest: most other verbs act on claimed jobs.
step = st.one_of(
    put,
    claim,
    st.tuples(
        st.just("put"),
        st.integers(1, 3),
        st.sampled_from([-5.0, 0.0, 5.0, 30.0]),
        st.sampled_from(ROUTES),
        st.sampled_from([30.0, 86400.0]),
    ),
    st.tuples(
        st.just("claim"),
        st.sampled_from([["a"], ["b"], ["a", "b"]]),
        st.sampled_from(OWNERS),
        st.integers(1, 4),
        st.sampled_from([5.0, 20.0]),
    ),
    st.tuples(st.just("renew"), st.sampled_from(OWNERS), st.sampled_from([5.0, 20.0])),
    st.tuples(
        st.just("finish"),
        st.sampled_from(OWNERS),
        st.sampled_from(["complete", "error", "retrying", "queued"]),
        st.integers(0, 5),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("retry"), st.integers(0, 20)),
    st.tuples(st.just("release"), st.sampled_from(OWNERS), st.booleans()),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 10.0, 40.0])),
)


@dataclass
class World:
    """The backend under test and the oracle, at one fake clock."""

    subject: Backend
    oracle: Backend
    now: float = START
    ids: list[str] = field(default_factory=list)
    fences: tuple[Any, Any] | None = None

    def both(self, verb: str, *args: Any) -> tuple[Any, Any]:
        return getattr(self.subject, verb)(*args), getattr(self.oracle, verb)(*args)

    def held(self, owner: str) -> list[str]:
        """Ids the oracle says ``owner`` holds running, in id order."""
        records = [self.oracle.get(i, self.now) for i in self.ids]
        return sorted(r.id for r in records if r and r.state == "running" and r.owner == owner)


def view(record: JobRecord | None) -> Any:
    """What must agree between backends: not seq (each assigns its own), not floats to
    the last bit (some stores keep milliseconds)."""
    if record is None:
        return None
    rounded = [
        None if t is None else round(t, 3)
        for t in (record.eta, record.lease_until, record.finished_at, record.expires_at)
    ]
    return (
        record.state,
        record.route,
        record.owner,
        record.deliveries,
        record.attempts,
        *rounded,
        (record.error or {}).get("reason"),
        [(h["attempt"], h["state"]) for h in record.history or ()],
    )


def apply(world: World, op: tuple[Any, ...]) -> None:
    kind, *args = op
    now = world.now
    if kind == "put":
        count, delta, route, ttl = args
        jobs = []
        for _ in range(count):
            job_id = f"j{len(world.ids)}"
            world.ids.append(job_id)
            jobs.append(job(job_id, route=route, eta=now + delta, result_ttl=ttl))
        got, want = world.both("put", jobs, now)
    elif kind == "claim":
        routes, owner, limit, lease = args
        got, want = world.both("claim", routes, owner, now, lease, limit)
        got, want = [j.id for j in got], [j.id for j in want]
    elif kind == "renew":
        owner, lease = args
        got, want = world.both("renew", owner, now, lease, world.held(owner))
    elif kind == "finish":
        owner, state, pick = args
        held = world.held(owner)
        if not held:
            return
        outcome = Outcome(
            held[pick % len(held)],
            state,
            result="1" if state == "complete" else None,
            error=None if state in ("complete", "queued") else {"type": "E", "message": "m"},
            eta=now + 5 if state == "retrying" else None,
        )
        got, want = world.both("finish", [outcome], owner, now)
    elif kind == "cancel":
        (pick,) = args
        if not world.ids:
            return
        target = world.ids[pick % len(world.ids)]
        got, want = world.both("cancel", [target], now, "changed my mind")
    elif kind == "retry":
        (pick,) = args
        records = {i: world.oracle.get(i, now) for i in world.ids}
        ended = [i for i, r in records.items() if r and r.state in ("error", "cancelled")]
        # Mostly a job that ended (a random one is rarely retryable), now and then any job.
        pool = world.ids if pick % 4 == 0 or not ended else ended
        if not pool:
            return
        got, want = world.both("retry", [pool[pick % len(pool)]], now)
    elif kind == "release":
        owner, first_started = args
        held = world.held(owner)
        started = held[:1] if first_started else []
        got, want = world.both("release", owner, now, started)
    elif kind == "sweep":
        assert world.fences is not None
        got = world.subject.sweep(now, world.fences[0])
        want = world.oracle.sweep(now, world.fences[1])
        got = (got.promoted, got.recovered, got.failed, got.expired)
        want = (want.promoted, want.recovered, want.failed, want.expired)
    else:
        (dt,) = args
        world.now += dt
        return
    assert got == want, (op, got, want)


def check(world: World, history: list[Any]) -> None:
    now = world.now
    for job_id in world.ids:
        got, want = world.subject.get(job_id, now), world.oracle.get(job_id, now)
        assert view(got) == view(want), (job_id, view(got), view(want), history)
        if got is not None:
            assert got.state in STATES
            if got.state == "running":
                assert got.owner and got.lease_until is not None, got
            else:
                assert got.owner is None, got
    counts = world.subject.stats(now).counts
    assert counts == world.oracle.stats(now).counts, history
    listed = {}
    for state in STATES:
        for record in world.subject.list_jobs(now, state=state, limit=1000):
            listed[(state, record.route)] = listed.get((state, record.route), 0) + 1
    assert listed == counts, (listed, counts)
    # Nothing lost: every id put is still there (nothing here reaches its expiry unseen).
    stored = {i for i in world.ids if world.oracle.get(i, now) is not None}
    assert {i for i in world.ids if world.subject.get(i, now) is not None} == stored


def redis_indexes_match_records(backend: Any, ids: list[str]) -> None:
    """Redis keeps each record's place in separate keys: check them against the records.

    A queued record is in its route's ready ZSET, a scheduled or retrying one in the
    scheduled ZSET (both scored by eta), a running one in the running ZSET (scored by its
    lease end) and its owner's held SET, a record with an expiry in the expiry ZSET; and
    the counts HASH holds the number of records per (state, route)."""
    from skunkqueue.persistence.redis_support import decode_record

    client, key = backend._client, backend._key
    counts: dict[str, int] = {}
    for job_id in ids:
        raw = client.hgetall(key("j:", job_id))
        if not raw:
            continue
        record = decode_record(job_id, raw)
        counts[f"{record.state}|{record.route}"] = (
            counts.get(f"{record.state}|{record.route}", 0) + 1
        )
        seq = str(record.seq)
        member = chr(48 + len(seq)) + seq + "|" + job_id
        ready = client.zscore(key("ready:", record.route), member)
        scheduled = client.zscore(key("scheduled"), member)
        running = client.zscore(key("running"), job_id)
        expiry = client.zscore(key("expiry"), job_id)
        assert (ready is not None) == (record.state == "queued"), (record, ready)
        assert (scheduled is not None) == (record.state in ("scheduled", "retrying")), record
        assert (running is not None) == (record.state == "running"), record
        if ready is not None:
            assert ready == record.eta, (record, ready)
        if scheduled is not None:
            assert scheduled == record.eta, (record, scheduled)
        if running is not None:
            assert running == record.lease_until, (record, running)
            assert client.sismember(key("held:", record.owner), job_id), record
        if record.expires_at is not None:
            assert expiry == record.expires_at, (record, expiry)
        elif record.state in ("complete", "error", "cancelled"):
            assert expiry == float("inf"), (record, expiry)
        else:
            assert expiry is None, (record, expiry)
    stored = {f: int(n) for f, n in client.hgetall(key("counts")).items() if int(n)}
    assert stored == counts, (stored, counts)


def sqlite_indexes_match_rows(backend: Any, ids: list[str]) -> None:
    """SQLite keeps its own indexes; integrity_check reads every index against the table."""
    assert backend._read("PRAGMA integrity_check") == [("ok",)]


def fdb_indexes_match_records(backend: Any, ids: list[str]) -> None:
    """FoundationDB keeps each record's place in key families beside ('j', id): every
    index key must point at a record in the matching state with the matching time, every
    record must have exactly its keys, and the ('c', state, route) counters must add up."""
    import struct

    begin, end = backend._range()
    pairs = backend._run(lambda tr: [(kv.key, kv.value) for kv in tr.get_range(begin, end)])
    records: dict[str, JobRecord] = {}
    found: dict[str, list[tuple[Any, ...]]] = {}
    counts: dict[tuple[str, str], int] = {}
    for key, value in pairs:
        parts = backend._unpack(key)
        family = parts[0]
        if family == "j":
            records[parts[1]] = backend._decode(value)
        elif family in ("s", "r", "u", "o", "x"):
            found.setdefault(parts[-1], []).append(parts)
        elif family == "c":
            (n,) = struct.unpack("<q", bytes(value))
            if n:
                counts[(parts[1], parts[2])] = n
    for job_id, record in records.items():
        keys = sorted(found.pop(job_id, []), key=lambda p: p[0])
        want = []
        if record.state == "queued":
            want.append(("r", record.route, record.eta))
        if record.state in ("scheduled", "retrying"):
            want.append(("s", record.eta))
        if record.state == "running":
            want += [("o", record.owner), ("u", record.lease_until)]
        if record.expires_at is not None:
            want.append(("x", record.expires_at))
        got = [(p[0], p[1], p[2]) if p[0] == "r" else (p[0], p[1]) for p in keys]
        assert sorted(got, key=repr) == sorted(want, key=repr), (record, keys)
    assert not found, f"index keys for ids with no record: {found}"
    tally: dict[tuple[str, str], int] = {}
    for record in records.values():
        tally[(record.state, record.route)] = tally.get((record.state, record.route), 0) + 1
    assert counts == tally, (counts, tally)


#: Checkers that read a backend's own keys or rows, by backend id.
RAW_CHECKERS = {
    "redis": redis_indexes_match_records,
    "redis+cluster": redis_indexes_match_records,
    "sqlite": sqlite_indexes_match_rows,
    "fdbsim": fdb_indexes_match_records,
    "fdbsim+tcp": fdb_indexes_match_records,
}


def test_random_sequences_agree_with_the_memory_oracle(store) -> None:
    examples = EXAMPLES.get(store.spec.id, DEFAULT_EXAMPLES)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples in every run: CI stays reproducible
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(step, min_size=4, max_size=30))
    def run(ops: list[tuple[Any, ...]]) -> None:
        subject = store.open(f"p-{uuid.uuid4().hex[:10]}")
        oracle = open_backend(f"memory://oracle-{uuid.uuid4().hex}", "oracle")
        try:
            world = World(subject, oracle)
            world.fences = (lead(subject, START, ttl=10**6), lead(oracle, START, ttl=10**6))
            history: list[Any] = []
            raw_check = RAW_CHECKERS.get(store.spec.id)
            for op in ops:
                history.append(op)
                apply(world, op)
                check(world, history)
                if raw_check is not None:
                    raw_check(subject, world.ids)
        finally:
            oracle.close()

    run()
