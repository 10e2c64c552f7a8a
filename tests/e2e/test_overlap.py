"""Overlap policies with real processes: a 3-second job on a 1-second schedule under each
policy at once, two worker pools, two schedulers, and the leader SIGKILLed mid-run.

Each run notes its own start and end (its process, its clock) in a file; the store's
records and each schedule's tick log say which ticks fired and which were skipped. Then:
no run of a serialising policy overlaps another of its schedule (``cancel_other``: only
for the moment its worker takes to notice the cancel), ``skip`` and ``buffer_one`` skip
ticks and say why, ``buffer_all`` skips none, ``allow`` overlaps, and no tick's job is
ever delivered twice, across the failover."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest

from skunkqueue.persistence.base import SCHEDULER_LEASE

from .conftest import E2E, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("e2e", ["sqlite", "redis"], indirect=True)]

POLICIES = ("allow", "skip", "buffer_one", "buffer_all", "cancel_other")
RUN = 3.0  # seconds a run takes
LEASE = 3.0  # a worker's: a heartbeat every second, so a cancel is noticed within one
TTL = 2.0  # the leader's lease
# cancel_other's new run may start as soon as the store cancels the old one, and the old
# one stops at its worker's next heartbeat: one heartbeat, plus a margin for a loaded box.
CANCEL_NOTICED_WITHIN = LEASE / 3 + 1.5

BEATS = (
    """
import os
import time
from pathlib import Path

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
NOTES = Path(__file__).parent / 'runs.notes'


def run(policy):
    with open(NOTES, 'a') as notes:
        notes.write(f'start {policy} {os.getpid()} {time.time()!r}\\n')
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        with open(NOTES, 'a') as notes:
            notes.write(f'end {policy} {os.getpid()} {time.time()!r}\\n')

""".replace("RUN_SECONDS", repr(RUN))
    + "".join(
        f"""
@queue.event(routes=['{p}'], name='beats.{p}', every=1, overlap='{p}')
def {p}():
    run('{p}')
"""
        for p in POLICIES
    )
)


def runs_by_policy(e2e: E2E) -> dict[str, list[tuple[float, float | None]]]:
    """Each policy's runs as (start, end) by the runs' own notes: a process runs one job
    at a time, so a start pairs with the next end of the same process."""
    path = e2e.dir / "runs.notes"
    open_runs: dict[tuple[str, str], float] = {}
    runs: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for line in path.read_text().splitlines() if path.exists() else []:
        what, policy, pid, at = line.split()
        if what == "start":
            open_runs[(policy, pid)] = float(at)
        else:
            runs[policy].append((open_runs.pop((policy, pid)), float(at)))
    for (policy, _), start in open_runs.items():
        runs[policy].append((start, None))
    return runs


def overlaps(runs: list[tuple[float, float | None]], slack: float = 0.0) -> list[tuple]:
    """Pairs of runs where one started before an earlier one had ended (ended ``slack``
    early): none, for runs that never overlap."""
    found, ended = [], float("-inf")
    latest: tuple[float, float | None] | None = None
    for start, end in sorted(runs):
        if latest is not None and start < ended - slack:
            found.append((latest, (start, end)))
        until = float("inf") if end is None else end
        if until > ended:
            ended, latest = until, (start, end)
    return found


def test_each_overlap_policy_holds_across_a_leader_sigkill(e2e: E2E) -> None:
    e2e.write_module("beats", BEATS)
    queue = e2e.import_module("beats").queue
    backend = queue.backend
    # A cancelled run's worker says so; one that had claimed a superseded run in a batch
    # and hands it back unstarted finds it gone.
    e2e.expect(r"lost the lease on", r"cancelled", r"lease lost before its queued outcome")
    for _ in range(2):
        e2e.worker(
            *POLICIES, extra=("--import", "beats", "--lease", str(LEASE), "--concurrency", "4")
        )
    schedulers = [e2e.scheduler("--import", "beats", "--leader-ttl", str(TTL)) for _ in range(2)]

    def leader_pid() -> int | None:
        lease = next(iter(backend.leases(SCHEDULER_LEASE, time.time())), None)
        return None if lease is None else lease.info.get("pid")

    first = wait_until(leader_pid, 20.0, what="a leading scheduler")
    wait_until(
        lambda: len(runs_by_policy(e2e)) == len(POLICIES), 20.0, what="a run of every policy"
    )
    # Mid-run: every policy has a run in progress; the leader dies.
    wait_until(
        lambda: (
            all(any(end is None for _, end in r) for r in runs_by_policy(e2e).values())
            and len(runs_by_policy(e2e)) == len(POLICIES)
        ),
        20.0,
        what="a run in progress under every policy",
    )
    (leader,) = [s for s in schedulers if s.pid == first]
    leader.signal(signal.SIGKILL)
    wait_until(
        lambda: (pid := leader_pid()) is not None and pid != first, 20.0, what="a new leader"
    )
    killed_at = time.time()
    # Enough ticks under the new leader for each policy to meet a run in progress again.
    wait_until(
        lambda: all(
            any(start > killed_at + RUN for start, _ in runs)
            for policy, runs in runs_by_policy(e2e).items()
            if policy != "buffer_all"
        ),
        30.0,
        what="runs started under the new leader",
    )
    for proc in schedulers:
        proc.signal(signal.SIGKILL)
    # The runs cancel_other superseded last stop at their workers' next heartbeats.
    wait_until(
        lambda: all(end is not None for _, end in sorted(runs_by_policy(e2e)["cancel_other"])[:-1]),
        10.0,
        what="superseded runs stopped",
    )

    runs = runs_by_policy(e2e)
    schedules = {s.name: s for s in backend.schedules()}
    now = time.time()
    tick_jobs = [j for j in backend.list_jobs(now, limit=100_000) if j.schedule]
    # No tick's job was ever handed out twice (a leader's death fires nothing again).
    assert all(j.deliveries <= 1 for j in tick_jobs), [
        (j.id, j.deliveries) for j in tick_jobs if j.deliveries > 1
    ]

    def skipped_for_overlap(policy: str) -> int:
        log = schedules[f"beats.{policy}"].state.get("log", [])
        return sum(
            e.get("count", 1)
            for e in log
            if e["outcome"] == "skipped" and str(e.get("reason", "")).startswith("overlap=")
        )

    assert overlaps(runs["allow"]), runs["allow"]
    for policy in ("skip", "buffer_one", "buffer_all"):
        assert not overlaps(runs[policy]), (policy, overlaps(runs[policy]))
    assert not overlaps(runs["cancel_other"], slack=CANCEL_NOTICED_WITHIN), overlaps(
        runs["cancel_other"], slack=CANCEL_NOTICED_WITHIN
    )
    assert skipped_for_overlap("skip") > 0
    assert skipped_for_overlap("buffer_one") > 0
    assert skipped_for_overlap("buffer_all") == 0
    assert skipped_for_overlap("cancel_other") == 0
    # buffer_all keeps every tick: more fired than ran, the rest wait their turn.
    buffered = [j for j in tick_jobs if j.event == "beats.buffer_all" and j.state == "queued"]
    assert len(buffered) >= 2
    # buffer_one never has more than one waiting.
    waiting = [j for j in tick_jobs if j.event == "beats.buffer_one" and j.state == "queued"]
    assert len(waiting) <= 1
    # cancel_other's superseded runs say why; none of them ran to its end.
    superseded = [
        j for j in tick_jobs if j.event == "beats.cancel_other" and j.state == "cancelled"
    ]
    assert superseded and all("overlap=cancel_other" in j.error["reason"] for j in superseded)
    earlier = sorted(runs["cancel_other"])[:-1]  # the last may run on: nothing supersedes it
    assert all(end is None or end - start < RUN - 0.2 for start, end in earlier), earlier
