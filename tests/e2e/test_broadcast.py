"""Broadcast: every worker alive on the route at fire time runs its own copy, once."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import E2E, REPO, wait_until

TASKS = """
import os
from pathlib import Path

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}', queue_type='broadcast')


@queue.event(routes=['foo'])
def whoami(tag):
    with open(Path(__file__).with_name(f'{tag}.runs'), 'a') as runs:
        runs.write(f'{os.getpid()}\\n')
    return [tag, os.getpid()]
"""


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid``, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


@pytest.mark.cluster
def test_broadcast_runs_once_on_each_of_three_workers(e2e: E2E) -> None:
    e2e.write_module("bcast_tasks", TASKS)
    worker = e2e.worker("foo", "foo", "foo")
    e2e.wait_for_workers(3)
    tasks = e2e.import_module("bcast_tasks")
    worker_pids = wait_until(
        lambda: children_of(worker.pid) if len(children_of(worker.pid)) == 3 else None,
        what="three worker processes",
    )

    for tag in ("first", "second"):
        run = tasks.whoami.fire(tag)
        results = run.wait(timeout=15)
        assert len(results) == 3, results
        pids = [pid for _, pid in results]
        assert all(t == tag for t, _ in results), results
        assert len(set(pids)) == 3, f"copies did not run on three distinct workers: {pids}"
        assert set(pids) == worker_pids, (
            f"copies ran on {pids}, the pool's workers are {worker_pids}"
        )
        for handle in run.handles:
            assert handle.state == "complete"
            assert (handle.attempts, handle.deliveries) == (1, 1)
        assert run.state == "complete"

    # Exactly once per worker: three executions per fire, nothing more afterwards.
    status = e2e.cli("status")
    assert status.returncode == 0, status.stderr
    assert " queued " not in status.stdout and " running " not in status.stdout, status.stdout
    for tag in ("first", "second"):
        runs = (e2e.dir / f"{tag}.runs").read_text().split()
        assert sorted(map(int, runs)) == sorted(worker_pids), runs
    assert worker.popen.poll() is None


@pytest.mark.parametrize("e2e", ["sqlite"], indirect=True)  # the seed uses the SQLite default_cfg
def test_seed_broadcast_pair_runs_as_written(e2e: E2E) -> None:
    for name in ("broadcast.py", "broadcast_worker.py"):
        shutil.copy(REPO / "examples" / name, e2e.dir / name)
    worker = e2e.spawn([sys.executable, "broadcast_worker.py"], name="broadcast_worker")
    e2e.queue_name = "demo"
    e2e.url = f"sqlite:///{e2e.dir / 'skunkqueue.db'}"
    e2e.wait_for_workers(3)
    worker_pids = wait_until(
        lambda: children_of(worker.pid) if len(children_of(worker.pid)) == 3 else None,
        what="three worker processes",
    )

    demo = e2e.run_python("broadcast.py")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert len(lines) == 3, demo.stdout + demo.stderr
    pids = set()
    for line in lines:
        greeting, pid = line.rsplit(" ", 1)
        assert greeting == "hello from worker process", line
        pids.add(int(pid))
    assert pids == worker_pids
    assert os.getpid() not in pids
    assert worker.popen.poll() is None
