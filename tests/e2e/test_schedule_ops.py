"""Operating a schedule with real processes: pause, run now, resume and backfill, each
requested while a real leader runs and followed at once by a SIGKILL of that leader, so
its successor (another ``skunq scheduler`` process) carries the request out.

An interval schedule of one second; leader TTL 2 s. What must hold: no tick of the
timetable fires after the pause was written, until the resume; the run asked for by
hand runs exactly once; after a backfill of a range, every tick of it ran exactly once
(fired then, or by the backfill), and the same backfill again adds nothing.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from skunkqueue.persistence.base import SCHEDULER_LEASE, Backend
from skunkqueue.scheduler.ticks import tick_job_id

from .conftest import E2E, Proc, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("e2e", ["sqlite", "redis"], indirect=True)]

TTL = 2.0  # the leader's lease: a SIGKILLed leader is replaced within about TTL + TTL / 3
TAKEOVER = TTL + TTL / 3 + 10  # the deadline for a standby to lead (slack for a loaded host)

BEAT = """
from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['beat'], every=1)
def beat():
    return None
"""

EVENT = "ops_beat.beat"


def leader(backend: Backend, procs: list[Proc]) -> Proc:
    """The scheduler process that leads now (waiting for one to)."""

    def find() -> Proc | None:
        lease = next(iter(backend.leases(SCHEDULER_LEASE, time.time())), None)
        pid = None if lease is None else lease.info.get("pid")
        return next((p for p in procs if p.pid == pid and p.popen.poll() is None), None)

    return wait_until(find, TAKEOVER, what="a live scheduler to lead")


def utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, timezone.utc)


def test_pause_trigger_resume_and_backfill_each_survive_a_leader_sigkill(e2e: E2E) -> None:
    e2e.write_module("ops_beat", BEAT)
    queue = e2e.import_module("ops_beat").queue
    backend = queue.backend
    first = backend.schedules()[0].next_fire
    worker = e2e.worker("beat", extra=("--import", "ops_beat", "--lease", "2"))
    schedulers = [e2e.scheduler("--import", "ops_beat", "--leader-ttl", str(TTL)) for _ in range(2)]

    def tick_id(t: float) -> str:
        return tick_job_id(e2e.queue_name, EVENT, float(t))

    def starts() -> Counter[str]:
        return Counter(re.findall(r"job (\S+) ops_beat\.beat started", worker.output()))

    def kill_the_leader() -> None:
        """SIGKILL the leader, and start a standby for the one that takes over."""
        leader(backend, schedulers).kill_group()
        schedulers.append(e2e.scheduler("--import", "ops_beat", "--leader-ttl", str(TTL)))

    def log() -> list:
        return queue.schedules()[0].last_ticks

    wait_until(lambda: len(starts()) >= 2, 20, what="two ticks run")

    # Pause, and kill the leader that may have read the schedule before it.
    queue.pause_schedule(EVENT, note="e2e")
    paused_at = backend.schedules()[0].state["paused"]["at"]
    kill_the_leader()
    wait_until(
        lambda: any(t.reason == "paused" and t.count >= 2 for t in log()),
        TAKEOVER + 10,
        what="the successor to skip two paused ticks",
    )

    # Run now while paused; the leader dies at once, before or after firing it.
    run = queue.trigger_schedule(EVENT)
    kill_the_leader()
    wait_until(lambda: starts()[run] == 1, TAKEOVER + 10, what="the triggered run")

    wait_until(
        lambda: sum(t.count for t in log() if t.reason == "paused") >= 5,
        10,
        what="five paused ticks skipped",
    )
    queue.resume_schedule(EVENT)
    resumed_at = backend.now()
    wait_until(
        lambda: sum(1 for j in starts() if j > tick_id(resumed_at + 1)) >= 2,
        20,
        what="two ticks run after the resume",
    )
    cron = sorted(
        float(t) for t in range(int(first), int(resumed_at) + 1) if tick_id(t) in starts()
    )
    assert cron and max(t for t in cron if t < resumed_at - 1) <= paused_at + 1, (
        "a tick fired while paused"
    )
    skipped = [t for t in range(int(paused_at) + 2, int(resumed_at) - 1)]
    assert len(skipped) >= 2 and not [t for t in skipped if tick_id(t) in starts()]

    # Backfill from before the schedule existed to now; the leader dies at once.
    start, end = int(first) - 3, int(backend.now())
    requested = queue.backfill(EVENT, utc(start), utc(end))
    kill_the_leader()
    every_tick = {tick_id(t) for t in range(start, end)}
    wait_until(
        lambda: every_tick <= set(starts()), TAKEOVER + 20, what="every tick of the range to run"
    )
    ran_twice = {j for j in every_tick if starts()[j] != 1}
    assert not ran_twice, f"ticks that ran more than once: {sorted(ran_twice)}"
    assert requested >= 3 + len(skipped)  # before it existed, and paused (and coalesced)
    assert queue.backfill(EVENT, utc(start), utc(end)) == 0
    assert queue.schedules()[0].pending_backfill == []
    assert starts()[run] == 1
