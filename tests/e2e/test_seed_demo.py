"""The seed's demo.py and demo_worker.py, run as written (Python 3) on the SQLite default."""

from __future__ import annotations

import shutil
import sys

import pytest

from .conftest import E2E, REPO


@pytest.mark.parametrize("e2e", ["sqlite"], indirect=True)  # the seed uses the SQLite default_cfg
@pytest.mark.cluster
def test_seed_demo_prints_result_and_state(e2e: E2E) -> None:
    for name in ("demo.py", "demo_worker.py"):
        shutil.copy(REPO / "examples" / name, e2e.dir / name)
    worker = e2e.spawn([sys.executable, "demo_worker.py"], name="demo_worker")
    e2e.queue_name = "demo"
    e2e.url = f"sqlite:///{e2e.dir / 'skunkqueue.db'}"
    e2e.wait_for_workers(1)
    demo = e2e.run_python("demo.py")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines() == ["result 9", "state complete"], demo.stdout + demo.stderr
    assert worker.popen.poll() is None
