"""SkunkQueue in thirty seconds, on the embedded SQLite default (no server needed).

    python examples/quickstart.py

It starts a worker pool (`skunq work`, which runs a scheduler candidate too) as a separate
process, fires a delayed job, waits for a cron tick and for a job that fails twice before
it succeeds, prints what happened, stops the pool and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta

from skunkqueue import Retry, SkunkQueue

HERE = os.path.dirname(os.path.abspath(__file__))
DB = os.environ.get(
    "QUICKSTART_DB", os.path.join(tempfile.gettempdir(), "skunkqueue-quickstart.db")
)

queue = SkunkQueue("quickstart", url=f"sqlite:///{DB}")


@queue.event(routes=["default"])
def add(first, second):
    return first + second


@queue.event(routes=["default"], cron="* * * * * */2")  # every 2 seconds (seconds field last)
def tick():
    return datetime.now().isoformat(timespec="milliseconds")


@queue.event(routes=["default"], retry=Retry(max_attempts=4, delay=0.2, backoff=2.0, on=(IOError,)))
def flaky(counter_file):
    """Fails with IOError on its first two executions, then succeeds."""
    runs = int(open(counter_file).read()) + 1 if os.path.exists(counter_file) else 1
    with open(counter_file, "w") as f:
        f.write(str(runs))
    if runs < 3:
        raise OSError(f"transient failure on execution {runs}")
    return f"succeeded on execution {runs}"


def main() -> None:
    pool = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skunkqueue",
            "work",
            "-q",
            "quickstart",
            "-r",
            "default",
            "default",
            "--import",
            "quickstart",
            "--url",
            f"sqlite:///{DB}",
            "--log-level",
            "WARNING",
        ],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])),
        },
    )
    try:
        print("fired add(4, 5) now:", add.fire(4, 5).wait(timeout=20))

        eta = datetime.now() + timedelta(seconds=2)
        delayed = add.fire_at(eta, 20, 22)
        print(f"fired add(20, 22) for {eta:%H:%M:%S.%f}; state now: {delayed.state}")
        result = delayed.wait(timeout=20)
        started = queue.backend.get(delayed.id, time.time()).started_at
        print(f"  -> {result}, started {1000 * (started - eta.timestamp()):.1f} ms after its eta")

        counter = os.path.join(tempfile.mkdtemp(), "flaky-runs")
        run = flaky.fire(counter)
        print(
            "fired flaky(); it fails twice, then:",
            run.wait(timeout=20),
            f"(attempts: {run.attempts})",
        )

        deadline = time.time() + 20
        ticks = []
        while not ticks and time.time() < deadline:
            ticks = [j for j in queue.jobs(state="complete", limit=1000) if j.schedule == tick.name]
            time.sleep(0.1)
        if not ticks:
            raise SystemExit("no cron tick completed within 20 s")
        print(f"cron tick job {ticks[-1].id} ran at {queue.get(ticks[-1].id).result}")
        print("done: delayed, cron and retried jobs all ran")
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=30)


if __name__ == "__main__":
    main()
