"""One clock: processes whose own clocks are tens of seconds off still decide by the store's.

Every process here is real and runs with its wall clock shifted (tests/clockshift.py):
a producer 25 s ahead, a leading scheduler 20 s behind and a standby 20 s ahead, and two
workers 20 s behind and ahead. By the true clock (this test's), no delayed job starts
before its eta, a job that runs longer than its lease runs once, the healthy leader keeps
the lead, and delayed jobs are not late. FoundationDB has no clock to agree on (its
README section says what it trusts instead), so it is not among the stores here.
"""

from __future__ import annotations

import json
import sys

import pytest

from skunkqueue.persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX
from tests.clockshift import SHIFT_ENV

from .conftest import E2E, wait_until

TASKS = """
import os
import time
from pathlib import Path

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
HERE = Path(__file__).parent


def true_time():
    return time.time() - float(os.environ.get('SQ_CLOCK_SHIFT', '0'))


@queue.event(routes=['foo'])
def stamp(i):
    return true_time()


@queue.event(routes=['slow'])
def long_job(name):
    with open(HERE / f'{name}.runs', 'a') as runs:
        runs.write(f'{os.getpid()} {true_time()!r}\\n')
    time.sleep(2 * float(os.environ['SQ_TEST_LEASE']))  # it lives by its renewals alone
    return name
"""

# Run with its clock 25 s ahead: it fires jobs at true instants (from a correct clock,
# as a user's datetime may come from anywhere) and after true delays.
PRODUCER = """
import json
from datetime import datetime, timedelta, timezone

from clock_tasks import long_job, stamp, true_time

count = int({count})
base = true_time() + 2.0
fired = []
for i in range(count):
    if i % 2:
        delay = 2.0 + 2.0 * i / count
        eta = true_time() + delay
        handle = stamp.fire_at(timedelta(seconds=delay), i)
    else:
        eta = base + 2.0 * i / count
        handle = stamp.fire_at(datetime.fromtimestamp(eta, timezone.utc), i)
    fired.append([handle.id, eta])
long_job.fire('long')
with open('fired.json', 'w') as out:
    json.dump(fired, out)
"""

# Seconds a worker's job lease lasts. A heartbeat call gives up after a third of it, and
# the MongoDB stand-in, loaded, can take longer than 2 / 3 s to answer one.
LEASES = {"sqlite": 2.0, "redis": 2.0, "mongodb": 6.0}
# The leader's lease, per store; well under the 20 s shifts either way, so a standby that
# went by its own clock would still take the lead. The MongoDB stand-in, on a loaded
# machine (the suite runs in three workers), can take longer than a third of 2 s to answer
# a renewal: the healthy leader then lost its own lease (token 1 -> 2, same owner).
LEADER_TTLS = {"sqlite": "2", "redis": "2", "mongodb": "6"}


def shifted_python(e2e: E2E, script: str, shift: float) -> None:
    done = e2e.run_python_argv(
        [sys.executable, "-m", "tests.clockshift", script], env={SHIFT_ENV: repr(shift)}
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("e2e", ["sqlite", "redis", "mongodb"], indirect=True)
def test_processes_with_skewed_clocks_agree_on_the_stores(
    e2e: E2E, request: pytest.FixtureRequest
) -> None:
    store = request.node.callspec.params["e2e"]
    e2e.write_module("clock_tasks", TASKS)
    backend = e2e.queue().backend

    leader_ttl = LEADER_TTLS[store]
    slow_leader = e2e.start("scheduler", "--leader-ttl", leader_ttl, clock_shift=-20.0)
    # Leases are listed as of time 0, so that the record is found whatever its holder's
    # clock made of its end.
    leader = wait_until(
        lambda: next(iter(backend.leases(SCHEDULER_LEASE, 0.0)), None),
        what="the slow scheduler leading",
    )
    assert leader.info["pid"] == slow_leader.pid
    e2e.start("scheduler", "--leader-ttl", leader_ttl, clock_shift=20.0, name="standby")
    lease = LEASES[store]
    e2e.env["SQ_TEST_LEASE"] = repr(lease)
    common = ("--no-scheduler", "--lease", repr(lease), "--import", "clock_tasks")
    e2e.start("work", "-r", "foo", "slow", *common, clock_shift=-20.0, name="slow-worker")
    e2e.start("work", "-r", "foo", *common, clock_shift=20.0, name="fast-worker")
    wait_until(
        lambda: len(backend.leases(WORKER_LEASE_PREFIX, 0.0)) == 3,  # one per route given
        timeout=30,
        what="three workers",
    )

    count = max(10, round(100 * e2e.scale))
    e2e.write_module("producer", PRODUCER.replace("{count}", str(count)))
    shifted_python(e2e, "producer.py", 25.0)
    fired = json.loads((e2e.dir / "fired.json").read_text())

    wait_until(
        lambda: backend.stats(backend.now()).counts.get(("complete", "foo"), 0) == count,
        timeout=30,
        what=f"{count} delayed jobs complete",
    )
    queue = e2e.queue()
    lateness = []
    for job_id, eta in fired:
        record = queue.handle(job_id).record()
        assert record is not None and record.state == "complete", record
        started = float(json.loads(record.result))
        assert started >= eta, f"job {job_id} started {eta - started:.3f} s before its eta"
        assert record.started_at is not None and record.started_at >= eta - 0.05, (
            f"job {job_id} recorded its start {eta - record.started_at:.3f} s before its eta"
        )
        lateness.append(started - eta)
    lateness.sort()
    assert lateness[len(lateness) // 2] < 1.0 / e2e.scale, lateness
    assert lateness[-1] < 5.0, lateness

    wait_until(
        lambda: backend.stats(backend.now()).counts.get(("complete", "slow"), 0) == 1,
        timeout=10 + 4 * LEASES[store],
        what="the long job complete",
    )
    (record,) = backend.list_jobs(backend.now(), route="slow")
    runs = (e2e.dir / "long.runs").read_text().splitlines()
    assert len(runs) == 1 and record.deliveries == 1, (
        f"a job held by a live worker was handed out again: runs {runs}, "
        f"deliveries {record.deliveries}"
    )

    # The standby has campaigned every leader_ttl / 3 s for all of the above.
    now = backend.now()
    (still,) = backend.leases(SCHEDULER_LEASE, 0.0)
    assert (still.owner, still.token) == (leader.owner, leader.token), (
        f"the standby took the lead from a healthy leader: {still} (was {leader})"
    )

    status = e2e.cli("status").stdout
    workers = {w.info["pid"]: w.info for w in backend.leases(WORKER_LEASE_PREFIX, now)}
    assert {round(info["clock_offset"]) for info in workers.values()} == {20, -20}, workers
    assert "20.0" in status and "s ahead of the store's" in status, status
    assert "s behind the store's" in status, status
