"""The rule book (skunkqueue/persistence/rules.py) against every backend, case by case.

Each test holds a table of cases: the fields a record has before a verb, and the verb's
inputs. It stores every case's record in one store of the backend under test, runs the
verb over all of them at once (one put, one claim, one finish, ...), and compares what
the store holds afterwards (``get``) and what the verb answered with what the rule
computes on a copy of the same record as it was read before the verb. Redis runs its Lua
scripts here, SQLite its SQL, MongoDB its conditional updates; the memory backend calls
the rules directly and so shows that the tables themselves are sound. A table that never
reaches one of its rule's outcomes is refused, so no case can pass by doing nothing.

The clock starts a day ahead of real time, not at ``support.T0`` (2023): records here
expire, and MongoDB's TTL monitor deletes records by the real clock (see
test_properties.py).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from skunkqueue.errors import LeaseLost
from skunkqueue.jobs import JobRecord, JobState, Outcome
from skunkqueue.persistence import Backend, Fence, Lease, ScheduleRecord, rules

from .support import ids, job, lead

NOW = float(int(time.time())) + 86400.0

RUNNING, ERROR = JobState.RUNNING, JobState.ERROR


def _records(backend: Backend, names: list[str], now: float) -> dict[str, JobRecord | None]:
    return {name: backend.get(name, now) for name in names}


def _ruled(record: JobRecord, rule: Callable[..., Any], *args: Any) -> tuple[JobRecord, Any]:
    """What ``rule`` makes of a copy of ``record``, and what it answers."""
    copied = copy.deepcopy(record)
    return copied, rule(copied, *args)


def _claimed(backend: Backend, records: list[JobRecord], owner: str, now: float, lease: float):
    """Put ``records`` (all due at ``now``) and claim every one of them for ``owner``."""
    assert backend.put(records, now) == [True] * len(records)
    taken = backend.claim([r.route for r in records], owner, now, lease, limit=len(records))
    assert sorted(ids(taken)) == sorted(r.id for r in records)


def _raised(call: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException | None:
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return exc
    return None


# -- put: rules.state_on_put -------------------------------------------------------

ETAS = {"before": -5.0, "equal": 0.0, "after": 5.0}


def test_put_takes_the_state_the_rule_chooses(backend):
    """Every given state, with an eta before, at and after the put's ``now``."""
    jobs = [
        job(f"{state}-{when}", eta=NOW + delta, state=state, result_ttl=100.0)
        for when, delta in ETAS.items()
        for state in JobState
    ]
    assert backend.put(jobs, NOW) == [True] * len(jobs)
    chosen = set()
    for sent in jobs:
        stored = backend.get(sent.id, NOW)
        assert stored is not None, sent.id
        state = rules.state_on_put(sent, NOW)
        chosen.add(state)
        assert stored == replace(sent, state=state, seq=stored.seq), sent.id
    assert chosen == {"queued", "scheduled", "retrying", "cancelled"}


def test_put_refuses_a_live_id_and_replaces_an_expired_one(backend):
    """An id is taken until its record expires (``expires_at <= now``), whatever its state."""
    _claimed(backend, [job("running", route="r")], "w", NOW, 60)
    finished = [job("complete-live", result_ttl=10.5), job("complete-expired", result_ttl=10)]
    _claimed(backend, finished, "w", NOW, 60)
    backend.finish([Outcome(j.id, "complete", result='"1"') for j in finished], "w", NOW)
    backend.put(
        [
            job("queued"),
            job("scheduled", eta=NOW + 50),
            job("cancelled-live", state="cancelled", expires_at=NOW + 11),
            job("cancelled-expired-now", state="cancelled", expires_at=NOW + 10),
            job("cancelled-expired", state="cancelled", expires_at=NOW + 5),
        ],
        NOW,
    )
    names = [
        "running",
        "complete-live",
        "complete-expired",
        "queued",
        "scheduled",
        "cancelled-live",
        "cancelled-expired-now",
        "cancelled-expired",
    ]
    before = _records(backend, names, NOW)
    at = NOW + 10
    again = [job(name, eta=NOW + 20, payload='"second"') for name in names]
    answers = backend.put(again, at)

    def free(old: JobRecord) -> bool:  # base.put and get: a record past its expiry is gone
        return old.expires_at is not None and old.expires_at <= at

    assert answers == [free(before[name]) for name in names]
    assert answers == [False, False, True, False, False, False, True, True]
    for sent, answer in zip(again, answers, strict=True):
        stored = backend.get(sent.id, at)
        if answer:
            assert stored == replace(sent, state=rules.state_on_put(sent, at), seq=stored.seq)
            assert stored.seq > max(r.seq for r in before.values()), sent.id
        else:
            assert stored == before[sent.id], sent.id


# -- claim: rules.take ------------------------------------------------------------

# id: (eta, attempts, deliveries before); put at NOW, claimed at NOW - 5 for 30 s.
CLAIMS = {
    "due-long-ago": (NOW - 10, 0, 0),
    "due-at-claim": (NOW - 5, 1, 1),
    # Queued by a leader whose clock is ahead of the claimer's: its start shows it.
    "due-after-claim": (NOW - 1, 2, 3),
    "due-at-put": (NOW, 0, 2),
}


def test_claim_takes_each_job_as_the_rule_says(backend):
    jobs = [
        job(name, eta=eta, attempts=attempts, deliveries=deliveries, max_deliveries=9)
        for name, (eta, attempts, deliveries) in CLAIMS.items()
    ]
    backend.put([*jobs, job("not-due", eta=NOW + 1)], NOW)
    before = _records(backend, list(CLAIMS), NOW)
    at = NOW - 5
    taken = backend.claim(["default"], "w", at, lease=30, limit=10)
    expected = [
        _ruled(r, rules.take, "w", at, 30)[0]
        for r in sorted(before.values(), key=lambda r: (r.eta, r.seq))
    ]
    assert taken == expected
    for record in expected:
        assert backend.get(record.id, at) == record, record.id
    assert {r.id: r.started_at for r in expected} == {
        "due-long-ago": at,
        "due-at-claim": at,
        "due-after-claim": at,
        "due-at-put": at,
    }
    assert backend.get("not-due", at).state == "scheduled"


# -- finish: rules.apply_outcome ---------------------------------------------------

ERR = {"type": "ValueError", "message": "bad", "traceback": "..."}

# id: (the outcome's state and fields, result_ttl); every job has run before (attempts 1,
# deliveries 2, an old result and error) and is held by "w" unless its id says otherwise.
FINISHES: dict[str, tuple[dict[str, Any], float]] = {
    "complete": ({"state": "complete", "result": '"r"'}, 33.3),  # now + 33.3 rounds
    "complete-no-result": ({"state": "complete"}, 86400.0),
    "complete-started": ({"state": "complete", "started_at": NOW - 0.25}, 100.0),
    "retrying-started": ({"state": "retrying", "eta": NOW + 2, "started_at": NOW - 0.5}, 100.0),
    "queued-started": ({"state": "queued", "started_at": NOW - 0.75}, 100.0),
    "error": ({"state": "error", "error": ERR}, 100.0),
    "error-with-result": ({"state": "error", "result": '"part"', "error": ERR}, 86400.0),
    "retrying-at-eta": ({"state": "retrying", "error": ERR, "eta": NOW + 60}, 100.0),
    "retrying-now": ({"state": "retrying", "error": ERR, "result": '"x"'}, 100.0),
    "retrying-no-error": ({"state": "retrying", "eta": NOW + 1.5}, 100.0),
    "queued": ({"state": "queued", "error": ERR, "result": '"x"'}, 100.0),
    "held-by-other": ({"state": "complete", "result": '"r"'}, 100.0),
    "not-running": ({"state": "complete", "result": '"r"'}, 100.0),
    "unknown": ({"state": "complete"}, 100.0),
}


def test_finish_applies_each_outcome_as_the_rule_says(backend):
    def ran_before(name: str, route: str = "default") -> JobRecord:
        ttl = FINISHES[name][1]
        old = {"attempts": 1, "deliveries": 2, "result": '"old"', "error": {"old": True}}
        return job(name, route=route, eta=NOW - 1, result_ttl=ttl, **old)

    mine = [n for n in FINISHES if n not in ("held-by-other", "not-running", "unknown")]
    _claimed(backend, [ran_before(n) for n in mine], "w", NOW, 30)
    _claimed(backend, [ran_before("held-by-other", route="other")], "other", NOW, 30)
    backend.put([ran_before("not-running")], NOW)
    before = _records(backend, list(FINISHES), NOW)
    at = NOW + 7
    outcomes = [Outcome(name, **fields) for name, (fields, _) in FINISHES.items()]
    answers = backend.finish(outcomes, "w", at)

    expected: dict[str, JobRecord | None] = {}
    for outcome in outcomes:
        old = before[outcome.job_id]
        held = old is not None and old.state == RUNNING and old.owner == "w"  # base.finish
        expected[outcome.job_id] = _ruled(old, rules.apply_outcome, outcome, at)[0] if held else old
    assert answers == [n in mine for n in FINISHES]
    assert _records(backend, list(FINISHES), at) == expected
    assert {n: r.state for n, r in expected.items() if r} == {
        **{n: n.split("-")[0] for n in mine},
        "held-by-other": "running",
        "not-running": "queued",
    }


# -- sweep's recovery: rules.lapsed, rules.recover ------------------------------------

# id: (lease, attempts, deliveries before the claim, max_deliveries or None for the
# default, result_ttl or None for the default). Claimed at NOW, swept at NOW + 20; the
# claim adds a delivery, so lost = deliveries + 1 - attempts.
RECOVERIES: dict[str, tuple[float, int, int, int | None, float | None]] = {
    "lost-below-max": (10, 0, 1, 3, 100.0),
    "lost-at-max": (10, 1, 3, 3, 100.0),
    "lost-above-max": (10, 0, 4, 2, None),
    "lost-at-default-max": (10, 0, 2, None, None),
    "first-loss": (10, 0, 0, None, 100.0),
    "first-loss-fatal": (10, 0, 0, 1, 100.0),
    "lapsed-just-now": (19.5, 0, 0, 3, 100.0),
    "lease-ends-now": (20, 0, 5, 3, 100.0),  # held through its lease_until: not lapsed
    "lease-ends-later": (21, 0, 5, 3, 100.0),
}


def test_sweep_recovers_lapsed_leases_as_the_rule_says(backend):
    for name, (lease, attempts, deliveries, most, ttl) in RECOVERIES.items():
        fields: dict[str, Any] = {"attempts": attempts, "deliveries": deliveries}
        if most is not None:
            fields["max_deliveries"] = most
        if ttl is not None:
            fields["result_ttl"] = ttl
        _claimed(backend, [job(name, route=name, **fields)], "w", NOW, lease)
    before = _records(backend, list(RECOVERIES), NOW)
    at = NOW + 20
    report = backend.sweep(at, lead(backend, at))
    expected = {
        n: _ruled(r, rules.recover, at)[0] if rules.lapsed(r, at) else r for n, r in before.items()
    }
    assert _records(backend, list(RECOVERIES), at) == expected
    lapsed = [n for n, r in before.items() if rules.lapsed(r, at)]
    failed = [n for n in lapsed if expected[n].state == ERROR]
    assert (report.recovered, report.failed) == (len(lapsed) - len(failed), len(failed))
    assert (report.promoted, report.expired) == (0, 0)
    assert set(lapsed) == set(RECOVERIES) - {"lease-ends-now", "lease-ends-later"}
    assert set(failed) == {
        "lost-at-max",
        "lost-above-max",
        "lost-at-default-max",
        "first-loss-fatal",
    }


# -- release: rules.release_held ---------------------------------------------------

# id: (attempts, deliveries before the claim, max_deliveries); claimed by "dead" at NOW
# unless the id says otherwise, released at NOW + 5 naming STARTED as begun.
RELEASES = {
    "started": (0, 0, 3),
    "started-lost-max": (0, 2, 3),
    "unstarted": (0, 0, 3),
    "unstarted-after-losses": (1, 4, 3),  # deliveries back down: the claim did not count
    "started-held-by-other": (0, 2, 3),
    "started-not-running": (0, 2, 3),
}
STARTED = ["started", "started-lost-max", "started-held-by-other", "started-not-running", "gone"]


def test_release_hands_back_as_the_rule_says(backend):
    def made(name: str, route: str = "default") -> JobRecord:
        attempts, deliveries, most = RELEASES[name]
        return job(
            name,
            route=route,
            attempts=attempts,
            deliveries=deliveries,
            max_deliveries=most,
            result_ttl=100.0,
        )

    dead = [n for n in RELEASES if n not in ("started-held-by-other", "started-not-running")]
    _claimed(backend, [made(n) for n in dead], "dead", NOW, 30)
    _claimed(backend, [made("started-held-by-other", route="alive")], "alive", NOW, 30)
    backend.put([made("started-not-running")], NOW)
    before = _records(backend, list(RELEASES), NOW)
    at = NOW + 5
    answer = backend.release("dead", at, started=STARTED)

    expected = dict(before)
    for name in dead:
        expected[name] = _ruled(before[name], rules.release_held, set(STARTED), at)[0]
    assert answer == {n: expected[n].state for n in dead}
    assert _records(backend, list(RELEASES), at) == expected
    assert answer == {
        "started": "queued",
        "started-lost-max": "error",
        "unstarted": "queued",
        "unstarted-after-losses": "queued",
    }
    assert backend.release("dead", at, started=STARTED) == {}


# -- cancel: rules.cancel -----------------------------------------------------------

# id: whether the rule cancels it (the table's own check that it covers both answers).
CANCELS = {
    "scheduled": True,
    "queued": True,
    "retrying": True,
    "retrying-due": True,  # its eta has passed, but no sweep has queued it yet
    "running": False,
    "complete": False,
    "error": False,
    "cancelled": False,
    "unknown": False,
}


def test_cancel_acts_on_each_state_as_the_rule_says(backend):
    done = [job(n, route=n, result_ttl=100.0) for n in ("running", "complete", "error")]
    _claimed(backend, done, "w", NOW, 30)
    backend.finish(
        [Outcome("complete", "complete"), Outcome("error", "error", error=ERR)], "w", NOW
    )
    backend.put(
        [
            job("scheduled", eta=NOW + 60),
            job("queued", result_ttl=33.3),
            job("retrying", eta=NOW + 30, state="retrying", error=ERR, result_ttl=5.0),
            job("retrying-due", eta=NOW - 1, state="retrying"),
            job("cancelled", state="cancelled", error={"reason": "earlier"}, result_ttl=100.0),
        ],
        NOW,
    )
    before = _records(backend, list(CANCELS), NOW)
    assert {n: r.state for n, r in before.items() if r} == {
        n: n.split("-")[0] for n in CANCELS if n != "unknown"
    }
    at = NOW + 3
    answers = backend.cancel(list(CANCELS), at, "not needed")

    expected: dict[str, JobRecord | None] = {}
    ruled: list[bool] = []
    for name, old in before.items():
        new, cancelled = (
            (None, False) if old is None else _ruled(old, rules.cancel, at, "not needed")
        )
        expected[name] = new
        ruled.append(cancelled)
    assert ruled == list(CANCELS.values())
    assert answers == ruled
    assert _records(backend, list(CANCELS), at) == expected


# With ``running``, a running job is cancelled too, whoever holds it; the rest as above.
CANCELS_RUNNING = {
    **CANCELS,
    "running": True,
    "running-retried": True,  # a second delivery, after a failed attempt: counts kept
    "running-other": True,  # held by another worker
}


def test_cancel_running_acts_on_each_state_as_the_rule_says(backend):
    done = [job(n, route=n, result_ttl=100.0) for n in ("running", "complete", "error")]
    done.append(job("running-retried", attempts=1, deliveries=1, error=ERR, result_ttl=7.0))
    _claimed(backend, done, "w", NOW, 30)
    _claimed(backend, [job("running-other", route="other")], "w2", NOW, 30)
    backend.finish(
        [Outcome("complete", "complete"), Outcome("error", "error", error=ERR)], "w", NOW
    )
    backend.put(
        [
            job("scheduled", eta=NOW + 60),
            job("queued", result_ttl=33.3),
            job("retrying", eta=NOW + 30, state="retrying", error=ERR, result_ttl=5.0),
            job("retrying-due", eta=NOW - 1, state="retrying"),
            job("cancelled", state="cancelled", error={"reason": "earlier"}, result_ttl=100.0),
        ],
        NOW,
    )
    before = _records(backend, list(CANCELS_RUNNING), NOW)
    assert {n: r.state for n, r in before.items() if r} == {
        n: n.split("-")[0] for n in CANCELS_RUNNING if n != "unknown"
    }
    at = NOW + 3
    answers = backend.cancel(list(CANCELS_RUNNING), at, "stop it", running=True)

    expected: dict[str, JobRecord | None] = {}
    ruled: list[bool] = []
    for name, old in before.items():
        new, cancelled = (
            (None, False) if old is None else _ruled(old, rules.cancel, at, "stop it", True)
        )
        expected[name] = new
        ruled.append(cancelled)
    assert ruled == list(CANCELS_RUNNING.values())
    assert answers == ruled
    assert _records(backend, list(CANCELS_RUNNING), at) == expected


# -- retry by hand: rules.retry, rules.remember_error ---------------------------------

# id: whether the rule retries it (the table's own check that it covers both answers).
RETRIES = {
    "error": True,
    "error-with-history": True,
    "error-lost-deliveries": True,
    "cancelled": True,
    "cancelled-never-expires": True,
    "error-expires-now": False,
    "error-expired": False,
    "scheduled": False,
    "queued": False,
    "retrying": False,
    "running": False,
    "complete": False,
    "unknown": False,
}


def test_retry_acts_on_each_state_as_the_rule_says(backend):
    earlier = [{"attempt": 1, "state": "retrying", "error": ERR, "started_at": None,
                "finished_at": None}]  # fmt: skip
    ran = [job(n, route=n, result_ttl=100.0) for n in ("running", "complete")]
    ran.append(job("error-with-history", route="ewh", attempts=1, history=earlier))
    ran += [job("error-expires-now", route="ex", result_ttl=3.0)]
    ran += [job("error-expired", route="ex2", result_ttl=2.0)]
    _claimed(backend, ran, "w", NOW - 1, 30)
    backend.finish(
        [Outcome("complete", "complete", result='"1"')]
        + [Outcome(n, "error", error=ERR) for n in ("error-with-history", "error-expires-now")]
        + [Outcome("error-expired", "error", error=ERR)],
        "w",
        NOW - 0.5,
    )
    backend.put(
        [
            job("error", route="err", state="cancelled", eta=NOW - 2, result_ttl=100.0),
            job("scheduled", eta=NOW + 60),
            job("queued", result_ttl=33.3),
            job("retrying", eta=NOW + 30, state="retrying", error=ERR),
            job("cancelled", eta=NOW + 30, result_ttl=50.0),
            job("cancelled-never-expires", state="cancelled", error={"reason": "put so"}),
            job("error-lost-deliveries", route="lost", max_deliveries=1, result_ttl=100.0),
        ],
        NOW - 1,
    )
    backend.cancel(["cancelled"], NOW - 1, "not needed")
    backend.claim(["lost"], "dead", NOW - 1, 0.25)
    backend.release("dead", NOW - 0.5, started=["error-lost-deliveries"])
    # "error" is a cancelled put turned into an error by a run: retried, run, failed.
    backend.retry(["error"], NOW - 1)
    backend.claim(["err"], "w", NOW - 1, 30)
    backend.finish([Outcome("error", "error", error=ERR, started_at=NOW - 0.9)], "w", NOW - 0.75)
    before = _records(backend, list(RETRIES), NOW)
    assert {n: r.state for n, r in before.items() if r} == {
        n: n.split("-")[0] for n in RETRIES if n not in ("unknown", "error-expired")
    } | {"error-expired": "error"}
    at = NOW + 2.5  # "error-expires-now": finished at NOW - 0.5 with a ttl of 3
    answers = backend.retry(list(RETRIES), at)

    expected: dict[str, JobRecord | None] = {}
    ruled: list[bool] = []
    for name, old in before.items():
        new, retried = (None, False) if old is None else _ruled(old, rules.retry, at)
        if old is not None and old.expires_at is not None and old.expires_at <= at:
            new = None  # gone for get, as for the verb
        expected[name] = new
        ruled.append(retried)
    assert ruled == list(RETRIES.values())
    assert answers == ruled
    got = _records(backend, list(RETRIES), at)
    for name, record in got.items():  # a retried record has a new seq: compared apart
        if record is not None and expected[name] is not None and RETRIES[name]:
            assert record.seq > max(r.seq for r in before.values() if r), name
            expected[name] = replace(expected[name], seq=record.seq)
    for name in RETRIES:
        assert got[name] == expected[name], name
    assert [len(got[n].history) for n in ("error", "error-with-history")] == [1, 2]


# -- the fence: rules.fence_holds ---------------------------------------------------

# Every lease is taken by "leader" at NOW for 30 s (until NOW + 30); "released" is then
# released, and "taken-over" taken by "successor" at NOW + 31; "never" is never taken.
# case: (lease name, fence owner, fence token: the stored token (1 for "never") plus this,
#        now, whether the fence holds: the table's own check that it covers both answers)
FENCES: dict[str, tuple[str, str, int, float, bool]] = {
    "holder": ("holder", "leader", 0, NOW + 10, True),
    "holder-at-until": ("holder", "leader", 0, NOW + 30, True),  # inclusive, as leases are
    "expired": ("holder", "leader", 0, NOW + 30.5, False),
    "wrong-owner": ("holder", "impostor", 0, NOW + 10, False),
    "older-token": ("holder", "leader", -1, NOW + 10, False),
    "newer-token": ("holder", "leader", 1, NOW + 10, False),
    "released": ("released", "leader", 0, NOW + 10, False),
    "never-taken": ("never", "leader", 0, NOW + 10, False),
    "deposed": ("taken-over", "leader", -1, NOW + 35, False),
    "successor": ("taken-over", "successor", 0, NOW + 35, True),
}


def _fence_cases(backend: Backend) -> tuple[dict[str, Lease], dict[str, tuple[Fence, float]]]:
    """Take the leases FENCES names; return each lease as stored and each case's fence."""
    current = {}
    for name in ("holder", "released", "taken-over"):
        current[name] = backend.acquire_lease(name, "leader", NOW, ttl=30)
    assert backend.release_lease("released", "leader")
    current["released"] = Lease("released", "", current["released"].token, 0.0, {})
    current["taken-over"] = backend.acquire_lease("taken-over", "successor", NOW + 31, ttl=30)
    fences = {}
    for case, (name, owner, offset, now, holds) in FENCES.items():
        token = (current[name].token if name in current else 1) + offset
        fences[case] = (Fence(name, owner, token), now)
        assert rules.fence_holds(current.get(name), fences[case][0], now) is holds, case
    return current, fences


def test_sweep_is_fenced_as_the_rule_says(backend):
    current, fences = _fence_cases(backend)
    for case, (fence, now) in fences.items():
        backend.put([job(f"due-{case}", eta=NOW + 1)], NOW)
        if rules.fence_holds(current.get(fence.name), fence, now):
            assert backend.sweep(now, fence).promoted == 1, case
            assert backend.get(f"due-{case}", now).state == "queued", case
        else:
            with pytest.raises(LeaseLost):
                backend.sweep(now, fence)
            assert backend.get(f"due-{case}", now).state == "scheduled", case
            backend.cancel([f"due-{case}"], now, "next case")  # not promoted by the next


def test_fenced_save_schedule_is_fenced_as_the_rule_says(backend):
    current, fences = _fence_cases(backend)
    saved = []
    for case, (fence, now) in fences.items():
        schedule = ScheduleRecord(case, {"every": 5}, {"event": "tests.add"}, now + 5, now)
        if rules.fence_holds(current.get(fence.name), fence, now):
            backend.save_schedule(schedule, now, fence=fence)
            saved.append(schedule)
        else:
            with pytest.raises(LeaseLost):
                backend.save_schedule(schedule, now, fence=fence)
    assert backend.schedules() == sorted(
        (replace(s, revision=1) for s in saved), key=lambda s: s.name
    )


def test_fire_schedule_is_fenced_as_the_rule_says(backend):
    current, fences = _fence_cases(backend)
    for case, (fence, now) in fences.items():
        backend.save_schedule(ScheduleRecord(case, {"every": 5}, {}, now, now), now)
        [schedule] = [s for s in backend.schedules() if s.name == case]
        tick = job(f"tick-{case}", eta=now, schedule=case)
        if rules.fence_holds(current.get(fence.name), fence, now):
            assert backend.fire_schedule(schedule, [tick], now + 5, now, fence) is True, case
            assert backend.get(tick.id, now) is not None, case
        else:
            with pytest.raises(LeaseLost):
                backend.fire_schedule(schedule, [tick], now + 5, now, fence)
            assert backend.get(tick.id, now) is None, case
            assert schedule in backend.schedules(), case


# -- schedule revisions: rules.expected_revision_holds, rules.unchanged_since -----------

# case: the writes a schedule's name had before the verb ("save" or "remove"), in order.
HISTORIES: dict[str, list[str]] = {
    "never-stored": [],
    "stored-once": ["save"],
    "stored-twice": ["save", "save"],
    "removed": ["save", "save", "remove"],
    "stored-again": ["save", "remove", "save"],
}


def _histories(backend: Backend) -> dict[str, int | None]:
    """Give each case's name its history; return the revision a reader sees (None: none)."""
    for name, history in HISTORIES.items():
        for step in history:
            if step == "save":
                backend.save_schedule(ScheduleRecord(name, {"every": 5}, {}, NOW, NOW), NOW)
            else:
                assert backend.remove_schedule(name)
    seen = {s.name: s.revision for s in backend.schedules()}
    assert seen == {"stored-once": 1, "stored-twice": 2, "stored-again": 2}
    return {name: seen.get(name) for name in HISTORIES}


def test_save_schedule_compares_revisions_as_the_rule_says(store):
    holds = set()
    for expected in range(4):  # 3: ahead of every name's revision
        backend = store.open(queue=f"{store.queue}-{expected}")
        revisions = _histories(backend)
        for name, revision in revisions.items():
            sent = ScheduleRecord(name, {"every": 7}, {"by": expected}, NOW + 7, NOW)
            written = backend.save_schedule(sent, NOW, expected_revision=expected)
            rule = rules.expected_revision_holds(revision, expected)
            assert written is rule, (name, expected)
            [after] = [s for s in backend.schedules() if s.name == name] or [None]
            if rule:
                holds.add((name, expected))
                assert after is not None and after.template == {"by": expected}, name
                # One more than the name's last revision, a removed schedule's included.
                assert after.revision == HISTORIES[name].count("save") + 1, name
            else:
                assert after is None or after.revision == revision, (name, expected)
    assert 0 < len(holds) < 4 * len(HISTORIES), "every case had the same outcome"


def test_fire_schedule_compares_revisions_as_the_rule_says(backend):
    revisions = _histories(backend)
    fence = lead(backend, NOW)
    answers = set()
    for name, revision in revisions.items():
        for read in range(4):
            schedule = ScheduleRecord(name, {"every": 5}, {}, NOW, NOW, revision=read)
            tick = job(f"{name}-{read}", eta=NOW, schedule=name)
            fired = backend.fire_schedule(schedule, [tick], NOW + 5, NOW, fence)
            rule = rules.unchanged_since(revision, read)
            assert fired is rule, (name, read)
            assert (backend.get(tick.id, NOW) is not None) is rule, (name, read)
            answers.add(fired)
            if fired:
                revision = read + 1
                assert [s.revision for s in backend.schedules() if s.name == name] == [revision]
    assert answers == {True, False}


# -- acquire_lease: rules.taken_lease -------------------------------------------------

# case: (what happened before: (owner, at, ttl) takes and ("release", owner) releases,
#        then the ask: owner and now). The ask's ttl is 20.
ACQUIRES: dict[str, tuple[list[tuple[Any, ...]], str, float]] = {
    "free": ([], "a", NOW),
    "other-unexpired": ([("a", NOW, 30)], "b", NOW + 10),
    "other-until-now": ([("a", NOW, 30)], "b", NOW + 30),
    "other-expired": ([("a", NOW, 30)], "b", NOW + 30.5),
    "self-unexpired": ([("a", NOW, 30)], "a", NOW + 10),
    "self-until-now": ([("a", NOW, 30)], "a", NOW + 30),
    "self-expired": ([("a", NOW, 30)], "a", NOW + 31),
    "self-released": ([("a", NOW, 30), ("release", "a")], "a", NOW + 1),
    "other-released": ([("a", NOW, 30), ("release", "a")], "b", NOW + 1),
    "second-holder": ([("a", NOW, 30), ("b", NOW + 31, 30)], "b", NOW + 40),
}


def test_acquire_lease_takes_as_the_rule_says(backend):
    current: dict[str, Lease | None] = {}
    for name, (history, _, _) in ACQUIRES.items():
        current[name] = None
        for step in history:
            if step[0] == "release":
                assert backend.release_lease(name, step[1])
                current[name] = Lease(name, "", current[name].token, 0.0, {})
            else:
                current[name] = backend.acquire_lease(name, *step, info={"step": step[1]})
                assert current[name] is not None, name
    answers = {}
    for name, (_, owner, now) in ACQUIRES.items():
        info = {"case": name}
        expected = rules.taken_lease(current[name], name, owner, now, 20.0, info)
        answers[name] = got = backend.acquire_lease(name, owner, now, 20.0, info)
        assert got == expected, name
        stored = [lease for lease in backend.leases(name, now) if lease.name == name]
        assert stored == [expected or current[name]], name
    tokens = {
        n: None if a is None else a.token - (current[n].token if current[n] else 0)
        for n, a in answers.items()
    }
    assert tokens == {
        "free": 1,
        "other-unexpired": None,
        "other-until-now": None,
        "other-expired": 1,
        "self-unexpired": 0,
        "self-until-now": 0,
        "self-expired": 1,
        "self-released": 1,
        "other-released": 1,
        "second-holder": 0,
    }


# -- batch caps: rules.MAX_BATCH -----------------------------------------------------


def test_one_sweep_promotes_at_most_max_batch(backend):
    """Claims are capped in test_claim.py; a sweep is too (here: its promotion part)."""
    names = [f"j{i:04}" for i in range(rules.MAX_BATCH + 5)]
    backend.put([job(n, eta=NOW + 1) for n in names], NOW)
    fence = lead(backend, NOW + 1)
    first = backend.sweep(NOW + 1, fence, limit=rules.MAX_BATCH + 100)
    assert (first.promoted, first.more) == (rules.MAX_BATCH, True)
    queued = backend.list_jobs(NOW + 1, state="queued", limit=len(names))
    assert ids(queued) == names[: rules.MAX_BATCH]  # earliest (eta, seq) first
    second = backend.sweep(NOW + 1, fence)
    assert (second.promoted, second.more) == (5, False)


# -- input checks: refused before any store sees them --------------------------------


def _everything(backend: Backend, names: list[str], now: float) -> Any:
    return (
        _records(backend, names, now),
        backend.list_jobs(now, limit=100),
        backend.leases("", now),
        backend.schedules(),
    )


def test_bad_inputs_raise_what_the_rules_raise_and_write_nothing(backend):
    _claimed(backend, [job("held"), job("held-2")], "w", NOW, 30)
    backend.put([job("waiting")], NOW)
    backend.save_schedule(ScheduleRecord("beat", {"every": 5}, {}, NOW), NOW)
    [beat] = backend.schedules()
    fence = lead(backend, NOW)
    names = ["held", "held-2", "waiting", "fresh"]
    before = _everything(backend, names, NOW)
    nameless = ScheduleRecord("", {"every": 5}, {}, NOW)
    too_many = [job(f"fresh-{i}") for i in range(rules.MAX_BATCH + 1)]
    nan_job = job("nan", eta=math.nan)
    bad_id = job(7)
    bad_result = [
        Outcome("held", "complete", result='"ok"'),
        Outcome("held-2", "complete", result=42),
    ]
    bad_id_outcome = [Outcome(7, "complete")]  # type: ignore[arg-type]

    def cancel_running_yes(*args: Any) -> list[bool]:
        return backend.cancel(*args, running="yes")  # type: ignore[arg-type]

    cases = [
        (rules.check_positive, ("lease", 0), backend.renew, ("w", NOW, 0)),
        (rules.check_positive, ("lease", -1), backend.claim, (["default"], "w2", NOW, -1)),
        (rules.check_positive, ("ttl", math.inf), backend.acquire_lease, ("x", "w", NOW, math.inf)),
        (rules.checked_count, ("limit", 0), backend.sweep, (NOW, Fence("x", "w", 1), 0)),
        (rules.checked_state, ("bogus",), backend.list_jobs, (NOW, "bogus")),
        (rules.check_jobs, ([job("fresh"), bad_id],), backend.put, ([job("fresh"), bad_id], NOW)),
        (rules.check_jobs, ([job("fresh"), nan_job],), backend.put, ([job("fresh"), nan_job], NOW)),
        (rules.check_outcomes, (bad_result,), backend.finish, (bad_result, "w", NOW)),
        (rules.check_outcomes, (bad_id_outcome,), backend.finish, (bad_id_outcome, "w", NOW)),
        (rules.check_ids, (["held", 7],), backend.renew, ("w", NOW, 30, ["held", 7])),
        (rules.check_ids, ([7],), backend.cancel, ([7], NOW, "no")),
        (rules.check_reason, (7,), backend.cancel, (["held"], NOW, 7)),
        (rules.check_flag, ("running", "yes"), cancel_running_yes, (["held"], NOW, "no")),
        (rules.check_schedule, (nameless,), backend.save_schedule, (nameless, NOW)),
        (rules.check_fire, ([job("fresh")], math.nan), backend.fire_schedule,
            (beat, [job("fresh")], math.nan, NOW, fence)),
        (rules.check_fire, (too_many, NOW + 5), backend.fire_schedule,
            (beat, too_many, NOW + 5, NOW, fence)),
        (rules.check_fire, ([job("fresh"), nan_job], NOW + 5), backend.fire_schedule,
            (beat, [job("fresh"), nan_job], NOW + 5, NOW, fence)),
    ]  # fmt: skip
    for rule, rule_args, verb, verb_args in cases:
        expected = _raised(rule, *rule_args)
        assert expected is not None, (rule.__name__, rule_args)
        got = _raised(verb, *verb_args)
        assert (type(got), str(got)) == (type(expected), str(expected)), verb.__name__
        assert _everything(backend, names, NOW) == before, verb.__name__


# Fields beyond the ones every caller sets, which stores used to treat each its own way
# (memory stored expires_at='soon' and could not read it back, SQLite refused
# attempts=None, Redis stored it as 0, SQLite stored timeout=NaN as None): the rule
# refuses them all alike now.
UNCHECKED = {
    "expires-at-text": {"expires_at": "soon"},
    "attempts-none": {"attempts": None},
    "timeout-nan": {"timeout": math.nan},
}


def test_a_record_the_rules_accept_is_stored_as_given_or_refused_alike(backend):
    """Put refuses a record as ``rules.check_jobs`` does, or stores it as given."""
    wrong = []
    for name, fields in UNCHECKED.items():
        batch = [job(f"ok-{name}"), job(name, **fields)]
        expected = _raised(rules.check_jobs, batch)
        got = _raised(backend.put, batch, NOW)
        if (type(got), str(got)) != (type(expected), str(expected)):
            wrong.append(f"{name}: put raised {got!r}, the rule {expected!r}")
            continue
        if expected is not None:
            if backend.get(f"ok-{name}", NOW) is not None:
                wrong.append(f"{name}: refused, but the call's other record was written")
            continue
        try:
            stored = backend.get(name, NOW)
        except Exception as exc:
            wrong.append(f"{name}: stored, but get raised {exc!r}")
            continue
        sent = batch[1]
        faithful = replace(sent, state=rules.state_on_put(sent, NOW), seq=getattr(stored, "seq", 0))
        if repr(stored) != repr(faithful):  # repr: NaN equals NaN
            wrong.append(f"{name}: stored {stored!r}")
    assert not wrong


# -- claim: rules.gate_open ----------------------------------------------------------

# id: (its concurrency limit, running jobs of its event before the claim). The running
# jobs have no limit of their own and run on another route: they count all the same.
GATES = {
    "no-limit-3-running": (None, 3),
    "limit-1-none-running": (1, 0),
    "limit-1-1-running": (1, 1),
    "limit-2-1-running": (2, 1),
    "limit-2-2-running": (2, 2),
    "limit-3-5-running": (3, 5),
}


def test_claim_lets_jobs_through_as_the_gate_rule_says(backend):
    running = [
        job(f"{name}-running-{i}", event=f"ev.{name}", route="elsewhere", eta=NOW - 20)
        for name, (_, n) in GATES.items()
        for i in range(n)
    ]
    _claimed(backend, running, "w", NOW, 60)
    candidates = [
        job(name, event=f"ev.{name}", concurrency=limit, eta=NOW - 10)
        for name, (limit, _) in GATES.items()
    ]
    assert backend.put(candidates, NOW) == [True] * len(candidates)
    before = _records(backend, list(GATES), NOW)
    verdicts = {name: rules.gate_open(before[name], n) for name, (_, n) in GATES.items()}
    assert set(verdicts.values()) == {True, False}
    taken = backend.claim(["default"], "w", NOW, lease=30, limit=len(GATES))
    assert sorted(ids(taken)) == sorted(name for name, through in verdicts.items() if through)
    for name, through in verdicts.items():
        stored = backend.get(name, NOW)
        assert stored.state == ("running" if through else "queued"), name
        assert stored.concurrency == GATES[name][0], name


# -- fire_schedule's state: rules.fired_state -----------------------------------------

# case: (the state stored before the step, the state the leader passes or None)
FIRED_STATES: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "none given, none stored": ({}, None),
    "none given, kept": ({"paused": {"at": NOW, "note": "n"}}, None),
    "given replaces": ({"triggers": [{"id": "t", "at": NOW}]}, {"log": [{"tick": NOW}]}),
    "given empty clears": ({"backfill": [[NOW - 60, NOW]]}, {}),
}


def test_fire_schedule_stores_the_state_as_the_rule_says(backend):
    fence = lead(backend, NOW)
    for name, (stored, given) in FIRED_STATES.items():
        backend.save_schedule(ScheduleRecord(name, {"every": 5}, {}, NOW, NOW, state=stored), NOW)
        [read] = [s for s in backend.schedules() if s.name == name]
        assert backend.fire_schedule(read, [], NOW + 5, NOW, fence, state=given) is True
    after = {s.name: s.state for s in backend.schedules()}
    for name, (stored, given) in FIRED_STATES.items():
        assert after[name] == rules.fired_state(stored, given), name
    assert len({json.dumps(s, sort_keys=True) for s in after.values()}) > 1, (
        "every case had the same outcome"
    )
