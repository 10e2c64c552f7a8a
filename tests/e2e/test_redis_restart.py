"""Redis goes away under load and comes back: nothing whose fire() returned is lost.

Redis runs with ``appendonly yes`` and ``appendfsync always``, so every acknowledged write
is on disk before the reply. It is restarted in the middle of a stream of fires, once
cleanly (SIGTERM) and once by SIGKILL. Every job must run exactly once, except a job that
was running at the restart: it may run again, and then its delivery count shows it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from skunkqueue import SkunkQueue

from ..servers import RedisServer
from .conftest import E2E, wait_until

JOBS = 1500

TASKS = """
import os
from skunkqueue import SkunkQueue

queue = SkunkQueue("{queue}", url="{url}")

@queue.event(routes=["foo"])
def record(n):
    with open(os.path.join(os.path.dirname(__file__), "runs.log"), "a") as log:
        log.write(f"{n}\\n")
    return n
"""


def fire_with_retries(queue: SkunkQueue, event: object, n: int, deadline: float) -> None:
    """Fire job ``n`` under a fixed id until a fire() returns: that is the acknowledgement."""
    while True:
        try:
            event.send(args=(n,), job_id=f"job-{n}")  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # pause: retry interval of a fire that has a deadline


@pytest.mark.parametrize("e2e", ["sqlite"], indirect=True)  # the world's URL is replaced below
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "sigkill"])
def test_restart_under_load_loses_nothing(e2e: E2E, tmp_path: Path, how: int) -> None:
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    # While Redis is away, workers and the scheduler retry; a lease may lapse meanwhile and
    # its job run again (the docstring's exception).
    e2e.expect(
        r"backend error; retrying",
        r"renewing leases failed; retrying",
        r"opening the heartbeat's connection failed; retrying",
        r"writing outcomes failed; will retry",
        r"lost the lease on",
        r"lease lost before its \w+ outcome was stored",
        r"starts no job and claims none",  # leases not renewed while Redis is away
    )
    try:
        e2e.url = server.url
        e2e.env["SKUNKQUEUE_URL"] = server.url
        e2e.write_module("restart_tasks", TASKS)
        tasks = e2e.import_module("restart_tasks")
        e2e.worker(
            "foo", "foo", extra=("--import", "restart_tasks", "--lease", "2"), scheduler=True
        )
        e2e.wait_for_workers(2)

        deadline = time.monotonic() + 60
        restarted = threading.Event()

        def restart_midway() -> None:
            wait_until(lambda: (e2e.dir / "runs.log").exists(), what="the first runs")
            server.restart(how)
            restarted.set()

        restarter = threading.Thread(target=restart_midway)
        restarter.start()
        fired_after_restart = 0
        for n in range(JOBS):
            fire_with_retries(tasks.queue, tasks.record, n, deadline)
            fired_after_restart += restarted.is_set()
            if n % 25 == 0:
                time.sleep(0.02)  # pause: keep the stream going across the restart
        restarter.join(timeout=30)
        assert restarted.is_set(), "the restart did not happen"
        assert fired_after_restart > 100, "the restart came after the stream of fires ended"

        queue = tasks.queue
        wait_until(
            lambda: all(
                (h := queue.get(f"job-{n}")) is not None and h.state == "complete"
                for n in range(JOBS)
            ),
            timeout=60,
            interval=0.2,
            what="every acknowledged job to complete",
        )
        worker_log = e2e.procs[0].output()
        assert "backend error" in worker_log, "the workers never saw Redis go away"
        runs = Counter(int(line) for line in (e2e.dir / "runs.log").read_text().split())
        assert set(runs) == set(range(JOBS))
        for n, count in runs.items():
            if count > 1:
                # Only a job in flight at the restart may run twice, and it shows.
                assert queue.get(f"job-{n}").deliveries >= count, (n, count)
    finally:
        server.stop(signal.SIGKILL)
