"""Faults with real processes and real signals: leader failover, fencing of a deposed
leader, workers killed mid-job, graceful (SIGTERM) and interrupting (SIGINT) stops, and a
supervisor killed on its own.

Leases are short (job lease 2 s, leader TTL 3 s, renewed every second) so the whole file
runs in well under a minute and a half; every wait is a condition with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import pytest

from skunkqueue import serialization
from skunkqueue.cron import ScheduleSpec
from skunkqueue.errors import LeaseLost
from skunkqueue.jobs import JobRecord
from skunkqueue.persistence.base import (
    SCHEDULER_LEASE,
    WORKER_LEASE_PREFIX,
    Backend,
    Lease,
    ScheduleRecord,
)
from skunkqueue.scheduler import Scheduler
from skunkqueue.scheduler.ticks import tick_job_id

from .conftest import E2E, Proc, wait_until

pytestmark = pytest.mark.e2e

LEASE = 2.0  # seconds a worker's job lease lasts
TTL = 3.0  # seconds the leader's lease lasts; renewed every TTL / 3
RENEW = TTL / 3
MARGIN = 1.5  # scheduling slack on a loaded 2-core machine

TICKS = """
from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['tick'], cron='* * * * * */1', misfire='all')
def tick():
    return None
"""

TASKS = """
import os
import time

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['foo'])
def nap(seconds):
    # A worker started with NAP_SECONDS set runs a redelivered long job quickly.
    time.sleep(float(os.environ.get('NAP_SECONDS', seconds)))
    return os.getpid()


@queue.event(routes=['foo'])
def whoami():
    return os.getpid()
"""


TICKS_ONCE = """
from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['tick'], every=1, misfire='all', result_ttl=1)
def tick():
    return None
"""

# A scheduler process that SIGKILLs itself just before, or just after, its Nth backend
# call that stores tick jobs (put or fire_schedule, whichever the scheduler sends them
# with): the crash windows of firing a tick, hit every time instead of by luck.
DYING_LEADER = """
import os
import signal
import sys

from skunkqueue import cli, persistence
from skunkqueue.jobs import JobRecord
from skunkqueue.scheduler import service

KILL_ON, WHEN, TTL = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class DiesAroundATickStep:
    def __init__(self, inner):
        self._inner = inner
        self._steps = 0

    def __getattr__(self, name):
        real = getattr(self._inner, name)
        if not callable(real) or name.startswith('_'):
            return real

        def call(*args, **kwargs):
            ticks = any(
                isinstance(a, list) and any(isinstance(j, JobRecord) and j.schedule for j in a)
                for a in args
            )
            self._steps += ticks
            dies = ticks and self._steps == KILL_ON
            if dies and WHEN == 'before':
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if dies:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return call


real_open = persistence.open_backend
service.open_backend = lambda url, queue: DiesAroundATickStep(real_open(url, queue))
sys.exit(cli.main(['scheduler', '--import', 'ticks_once', '--leader-ttl', TTL]))
"""


# -- helpers ----------------------------------------------------------------------------


def leader_lease(backend: Backend) -> Lease | None:
    return next(iter(backend.leases(SCHEDULER_LEASE, time.time())), None)


def new_leader(backend: Backend, old: Lease) -> Lease | None:
    lease = leader_lease(backend)
    return lease if lease is not None and lease.owner != old.owner else None


def status_leader(e2e: E2E) -> tuple[str, int]:
    """The leader's (host, pid) as ``skunq status`` prints them."""
    status = e2e.cli("status")
    assert status.returncode == 0, status.stderr
    match = re.search(r"^leader: \S+ \(host (\S+), pid (\d+),", status.stdout, re.MULTILINE)
    assert match, status.stdout
    return match.group(1), int(match.group(2))


def by_pid(procs: list[Proc], pid: int) -> tuple[Proc, list[Proc]]:
    """The process with ``pid`` and the others."""
    chosen = [p for p in procs if p.pid == pid]
    assert len(chosen) == 1, f"pid {pid} is none of {[p.pid for p in procs]}"
    return chosen[0], [p for p in procs if p.pid != pid]


def worker_pids(backend: Backend) -> dict[str, int]:
    """Live workers' ids and the pids of the processes that run their jobs."""
    return {
        lease.owner: lease.info["pid"] for lease in backend.leases(WORKER_LEASE_PREFIX, time.time())
    }


def running_owner(backend: Backend, job_id: str) -> str | None:
    record = backend.get(job_id, time.time())
    return (
        record.owner if record is not None and record.state == "running" and record.owner else None
    )


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def tick_records(backend: Backend) -> list[JobRecord]:
    jobs = backend.list_jobs(time.time(), limit=100_000)
    return sorted((j for j in jobs if j.schedule == "ticks.tick"), key=lambda j: j.eta)


# -- leader election --------------------------------------------------------------------


@pytest.mark.cluster
def test_cron_fires_every_tick_exactly_once_across_a_leader_sigkill(e2e: E2E) -> None:
    e2e.write_module("ticks", TICKS)
    schedulers = [e2e.scheduler("--import", "ticks", "--leader-ttl", str(TTL)) for _ in range(2)]
    worker = e2e.worker("tick", extra=("--import", "ticks", "--lease", str(LEASE)))
    backend = e2e.queue().backend

    first = wait_until(lambda: leader_lease(backend), 20, what="a leader")
    leader, (standby,) = by_pid(schedulers, first.info["pid"])
    wait_until(
        lambda: sum(j.state == "complete" for j in tick_records(backend)) >= 3,
        20,
        what="three ticks run under the first leader",
    )

    last_renewal = leader_lease(backend)
    assert last_renewal is not None and last_renewal.owner == first.owner
    killed_at = time.time()
    leader.kill_group()
    second = wait_until(
        lambda: new_leader(backend, first), TTL + RENEW + 10, what="the standby to lead"
    )
    # The new lease's expiry minus its TTL is when the standby last took or renewed it,
    # no earlier than the moment it took over.
    took_over = second.until - TTL
    assert second.info["pid"] == standby.pid
    assert second.token == first.token + 1
    assert took_over >= last_renewal.until, "the standby took a lease that had not expired"
    assert took_over - killed_at <= TTL + RENEW + MARGIN, (
        f"standby took over {took_over - killed_at:.2f} s after the kill"
    )

    wait_until(
        lambda: (
            sum(j.state == "complete" and j.eta > took_over for j in tick_records(backend)) >= 4
        ),
        20,
        what="four ticks run under the new leader",
    )
    standby.signal(signal.SIGTERM)
    assert standby.wait() == 0
    wait_until(
        lambda: all(j.state == "complete" for j in tick_records(backend)),
        15,
        what="every fired tick to be run",
    )

    ticks = tick_records(backend)
    etas = [int(j.eta) for j in ticks]
    assert all(j.eta == int(j.eta) for j in ticks), "tick instants are whole seconds"
    assert [j.id for j in ticks] == [
        tick_job_id(e2e.queue_name, "ticks.tick", j.eta) for j in ticks
    ]
    assert not [eta for eta, n in Counter(etas).items() if n > 1], "a tick fired twice"
    missing = sorted(set(range(etas[0], etas[-1] + 1)) - set(etas))
    assert not missing, f"ticks never fired: {missing}"
    assert etas[0] < killed_at - 1 and etas[-1] > took_over + 3, "the ticks span the failover"
    # Each tick ran once: one delivery, one concluded attempt, one start in the worker's log.
    assert {(j.attempts, j.deliveries) for j in ticks} == {(1, 1)}
    starts = Counter(re.findall(r"job (\S+) ticks\.tick started", worker.output()))
    assert starts == Counter({j.id: 1 for j in ticks})


def test_leaders_killed_around_the_tick_step_deliver_each_tick_exactly_once(e2e: E2E) -> None:
    """Interval ticks every second, whose records expire a second after they ran
    (``result_ttl=1``), ``misfire='all'``; leaders SIGKILLed just after the step that
    fired a tick (and just before one). Each successor takes over once the killed
    leader's lease lapsed, long after the last tick's record expired: it must fire every
    tick its predecessor did not, and none that it did. (Before fire_schedule, a leader
    killed between storing a tick's job and saving the advanced schedule left the tick
    to its successor, which stored and ran it again.)"""
    e2e.write_module("ticks_once", TICKS_ONCE)
    e2e.write_module("dying_leader", DYING_LEADER)
    e2e.import_module("ticks_once")  # stores the schedule: its first tick is the first to run
    backend = e2e.queue().backend
    [schedule] = backend.schedules()
    first = schedule.next_fire
    worker = e2e.worker("tick", extra=("--import", "ticks_once", "--lease", str(LEASE)))

    def leads(proc: Proc) -> bool:
        lease = leader_lease(backend)
        return lease is not None and lease.info.get("pid") == proc.pid

    def dying(when: str) -> Proc:
        argv = [sys.executable, "dying_leader.py", "2", when, str(TTL)]
        return e2e.spawn(argv, name=f"leader-dies-{when}")

    leader = dying("after")
    wait_until(lambda: leads(leader), 20, what="the first leader")
    # One standby at a time, started once the leader before it leads: it takes over.
    for standby in (
        lambda: dying("before"),
        lambda: e2e.scheduler("--import", "ticks_once", "--leader-ttl", str(TTL)),
    ):
        successor = standby()
        assert leader.wait(20) == -signal.SIGKILL
        wait_until(lambda s=successor: leads(s), TTL + RENEW + 10, what="the standby to lead")
        leader = successor
    took_over = time.time()
    wait_until(
        lambda: backend.schedules()[0].next_fire > took_over + 2,
        15,
        what="two ticks fired by the last leader",
    )
    leader.signal(signal.SIGTERM)
    assert leader.wait() == 0

    last = int(backend.schedules()[0].next_fire) - 1
    expected = {
        tick_job_id(e2e.queue_name, "ticks_once.tick", float(t))
        for t in range(int(first), last + 1)
    }

    def started() -> Counter[str]:
        return Counter(re.findall(r"job (\S+) ticks_once\.tick started", worker.output()))

    wait_until(lambda: set(started()) >= expected, 20, what="every fired tick to run")
    assert started() == Counter(dict.fromkeys(expected, 1)), "a tick ran twice, or never"
    assert len(expected) >= 2 * TTL, "the ticks span both takeovers"


def test_status_names_the_leader_and_a_stopped_leader_resigns(e2e: E2E) -> None:
    first_two = [e2e.scheduler("--leader-ttl", str(TTL)) for _ in range(2)]
    backend = e2e.queue().backend
    host = socket.gethostname()

    first = wait_until(lambda: leader_lease(backend), 20, what="a leader")
    leader, (standby,) = by_pid(first_two, first.info["pid"])
    assert status_leader(e2e) == (host, leader.pid)

    # SIGKILL: the standby waits for the lease to lapse, then leads within one renewal.
    last_renewal = leader_lease(backend)
    assert last_renewal is not None and last_renewal.owner == first.owner
    killed_at = time.time()
    leader.kill_group()
    second = wait_until(
        lambda: new_leader(backend, first), TTL + RENEW + 10, what="the standby to lead"
    )
    took_over = second.until - TTL
    assert second.info["pid"] == standby.pid
    assert took_over >= last_renewal.until, "the standby took a lease that had not expired"
    assert took_over - killed_at <= TTL + RENEW + MARGIN
    assert status_leader(e2e) == (host, standby.pid)

    # SIGTERM: the leader resigns on its way out, so the next standby need not wait for
    # the lease to lapse; it leads at its next campaign, within one renewal period.
    third = e2e.scheduler("--leader-ttl", str(TTL))
    third.wait_for_output("started on queue")
    assert leader_lease(backend).owner == second.owner
    standby.signal(signal.SIGTERM)
    assert standby.wait(10) == 0
    exited_at = time.time()
    lease = leader_lease(backend)
    assert lease is None or lease.owner != second.owner, "the stopped leader kept its lease"
    successor = wait_until(
        lambda: new_leader(backend, second), RENEW + 10, what="the third scheduler to lead"
    )
    assert successor.info["pid"] == third.pid
    assert successor.until - TTL - exited_at <= RENEW + MARGIN
    assert status_leader(e2e) == (host, third.pid)


def test_a_deposed_leaders_writes_are_rejected(e2e: E2E) -> None:
    """Two schedulers in this process on one SQLite file, driven by a fake clock."""
    a = Scheduler(e2e.queue_name, url=e2e.url, leader_ttl=TTL)
    b = Scheduler(e2e.queue_name, url=e2e.url, leader_ttl=TTL)
    backend = e2e.queue().backend
    t0 = float(int(time.time())) + 0.1
    no_args = serialization.encode_call("json", (), {}, "tasks.whoami")

    a.step(t0)
    b.step(t0)
    assert a.leading and not b.leading
    stale = a.election.fence
    assert stale is not None

    # A stalls past its TTL; B's next campaign takes the lead with a newer token.
    b.step(t0 + TTL + 0.5)
    assert b.leading and b.election.fence is not None
    assert b.election.fence.token == stale.token + 1

    # Work that became due meanwhile, as A's stale clock sees it.
    due_job = JobRecord(id="due", event="tasks.whoami", route="foo", payload=no_args, eta=t0 + 0.3)
    assert backend.put([due_job], t0) == [True]
    spec = ScheduleSpec.build(every=1, misfire="all")
    template = {"event": "tasks.whoami", "route": "foo", "payload": no_args}
    schedule = ScheduleRecord(
        "tasks.whoami", spec.to_dict(), template, next_fire=t0 + 0.9, updated_at=t0
    )
    backend.save_schedule(schedule, t0)

    # A's fenced writes, with the clock it read before stalling, are refused and write nothing.
    stale_now = t0 + 0.95
    with pytest.raises(LeaseLost):
        a.backend.sweep(stale_now, stale)
    moved = ScheduleRecord(
        schedule.name, schedule.spec, template, next_fire=t0 + 100, updated_at=stale_now
    )
    with pytest.raises(LeaseLost):
        a.backend.save_schedule(moved, stale_now, stale)
    a.step(stale_now)  # a turn that read its clock before the stall: its first write fails
    assert not a.leading, "A did not notice it was deposed"

    assert backend.get("due", t0 + 1).state == "scheduled"
    (stored,) = backend.schedules()
    assert stored.next_fire == t0 + 0.9 and stored.updated_at == t0
    assert backend.list_jobs(t0 + 1, limit=1000) == [backend.get("due", t0 + 1)]

    # A's next campaign finds B's live lease: A stays a standby and writes nothing.
    a.step(t0 + TTL + 1)
    assert not a.leading
    assert backend.get("due", t0 + TTL + 1).state == "scheduled"

    # The rightful leader's writes go through (a second after its last turn, so it
    # re-reads the schedules).
    later = t0 + TTL + 2
    b.step(later)
    assert b.leading
    assert backend.get("due", later).state == "queued"
    ticks = [
        tick_job_id(e2e.queue_name, "tasks.whoami", float(s))
        for s in range(int(t0) + 1, int(later) + 1)
    ]
    assert all(backend.get(tick, later) is not None for tick in ticks)
    assert backend.schedules()[0].next_fire == int(later) + 1

    for scheduler in (a, b):
        scheduler.backend.close()


# -- workers ----------------------------------------------------------------------------


def _running_job_with_a_rescuer(e2e: E2E) -> tuple[Proc, Any, int, int]:
    """A pool running a 3 s job, a second pool ready to take over, and a scheduler.

    Returns the first pool, the job's handle, the pid of the worker running it and the
    pid of the other pool's worker.
    """
    e2e.write_module("tasks", TASKS)
    tasks = e2e.import_module("tasks")
    backend = e2e.queue().backend
    e2e.scheduler("--leader-ttl", str(TTL))
    first_pool = e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))

    job = tasks.nap.fire(3)
    owner = wait_until(lambda: running_owner(backend, job.id), 20, what="the job to be claimed")
    running = worker_pids(backend)[owner]
    e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))
    e2e.wait_for_workers(2, timeout=20)
    (rescuer,) = [pid for worker_id, pid in worker_pids(backend).items() if worker_id != owner]
    return first_pool, job, running, rescuer


@pytest.mark.cluster
def test_worker_sigkilled_mid_job_is_redelivered_to_another_pool(e2e: E2E) -> None:
    first_pool, job, victim, rescuer = _running_job_with_a_rescuer(e2e)

    first_pool.kill_group()
    wait_until(lambda: not pid_alive(victim), 5, what=f"worker {victim} to die")
    assert job.wait(timeout=LEASE + 3 + 15) == rescuer
    record = job.record()
    assert record is not None
    assert (record.state, record.deliveries, record.attempts) == ("complete", 2, 1)
    assert rescuer != victim


@pytest.mark.parametrize("target", ["supervisor", "group"])
def test_sigterm_finishes_the_running_job_and_keeps_the_rest_queued(e2e: E2E, target: str) -> None:
    e2e.write_module("tasks", TASKS)
    tasks = e2e.import_module("tasks")
    # Fired before the pool starts, so its first claim takes them all in one batch: the
    # three behind the slow job are claimed (a delivery each) but not started.
    slow = tasks.nap.fire(2)
    waiting = [tasks.whoami.fire() for _ in range(3)]
    pool = e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))

    pool.wait_for_output(f"job {slow.id} tasks.nap started", timeout=20)
    signalled_at = time.time()
    if target == "group":
        os.killpg(pool.pid, signal.SIGTERM)
    else:
        pool.signal(signal.SIGTERM)
    assert pool.wait(timeout=15) == 0
    assert time.time() - signalled_at < 2 + 8

    record = slow.record()
    assert record is not None
    assert (record.state, record.attempts, record.deliveries) == ("complete", 1, 1)
    assert record.finished_at is not None and record.finished_at > signalled_at
    for handle in waiting:
        rec = handle.record()
        assert rec is not None
        assert (rec.state, rec.attempts, rec.deliveries, rec.owner) == ("queued", 0, 0, None)

    e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))
    for handle in waiting:
        assert isinstance(handle.wait(timeout=20), int)
        assert (handle.attempts, handle.deliveries) == (1, 1)


@pytest.mark.parametrize("target", ["group", "supervisor"])
def test_sigint_hands_the_interrupted_job_back_uncounted(e2e: E2E, target: str) -> None:
    e2e.write_module("tasks", TASKS)
    tasks = e2e.import_module("tasks")
    pool = e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))
    job = tasks.nap.fire(30)

    pool.wait_for_output(f"job {job.id} tasks.nap started", timeout=20)
    signalled_at = time.monotonic()
    if target == "group":
        os.killpg(pool.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        pool.signal(signal.SIGINT)
    assert pool.wait(timeout=10) == 0
    assert time.monotonic() - signalled_at < 5

    record = job.record()
    assert record is not None
    assert (record.state, record.attempts, record.deliveries) == ("queued", 0, 0)
    assert record.owner is None and record.error is None

    e2e.env["NAP_SECONDS"] = "0.1"
    e2e.worker("foo", extra=("--import", "tasks", "--lease", str(LEASE)))
    assert isinstance(job.wait(timeout=20), int)
    assert (job.attempts, job.deliveries) == (1, 1)


def test_sigkill_of_the_supervisor_alone_takes_its_workers_down(e2e: E2E) -> None:
    first_pool, job, orphan, rescuer = _running_job_with_a_rescuer(e2e)

    os.kill(first_pool.pid, signal.SIGKILL)  # the supervisor only, not its group
    first_pool.popen.wait(timeout=10)
    wait_until(lambda: not pid_alive(orphan), 5, what=f"worker {orphan} to die with its supervisor")

    assert job.wait(timeout=LEASE + 3 + 15) == rescuer
    record = job.record()
    assert record is not None
    assert (record.state, record.deliveries, record.attempts) == ("complete", 2, 1)
