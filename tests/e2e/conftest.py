"""End-to-end fixtures: real ``skunq`` worker and scheduler processes on a real SQLite file.

Every test gets its own directory (the processes' working directory, holding the
database and the task modules the test writes) and its own queue name. Processes run in
their own session, so teardown SIGKILLs each whole group: nothing outlives a test. Then
the referee (referee.py) reads what every process logged: trouble the test did not
declare with ``e2e.expect(...)`` fails it.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from skunkqueue import SkunkQueue

from ..clockshift import SHIFT_ENV
from ..waiting import wait_until
from .referee import Incident, unexpected

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


class Proc:
    """A started ``skunq`` process with its combined output in a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, argv: list[str]) -> None:
        self.popen = popen
        self.log = log
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill_group(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{' '.join(self.argv)} did not exit within {timeout} s; output:\n{self.output()[-3000:]}"
            )

    def wait_for_output(self, text: str, timeout: float = 15.0) -> None:
        wait_until(
            lambda: text in self.output(), timeout, what=f"{text!r} in output of {self.argv}"
        )


class E2E:
    """One test's world: a directory, a database URL, a queue name and its processes."""

    def __init__(self, directory: Path, url: str | None = None, scale: float = 1.0) -> None:
        self.dir = directory
        self.url = url or f"sqlite:///{directory / 'jobs.db'}"
        #: Share of the job counts a scenario uses on this store: the MongoDB stand-in
        #: server stores and claims tens of jobs per second, not thousands.
        self.scale = scale
        self.queue_name = f"q{uuid.uuid4().hex[:8]}"
        self.procs: list[Proc] = []
        self.modules: list[str] = []
        self.queues: list[SkunkQueue] = []
        self.expected: list[re.Pattern[str]] = []
        self.one_shots: list[tuple[str, str]] = []  # (command, output) of cli() and run_python()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(directory)]),
            "SKUNKQUEUE_URL": self.url,
            "SKUNKQUEUE_QUEUE": self.queue_name,
            "PYTHONUNBUFFERED": "1",
        }

    def expect(self, *patterns: str) -> None:
        """Declare trouble this test causes on purpose (regular expressions, searched in
        each logged incident with its traceback), so the referee lets it pass."""
        self.expected += [re.compile(p) for p in patterns]

    def trouble(self) -> list[Incident]:
        """What the test's processes (and one-shot commands) logged that it did not expect."""
        outputs = [
            (f"{' '.join(p.argv[2:]) or p.argv[0]} (pid {p.pid})", p.output()) for p in self.procs
        ]
        return unexpected(outputs + self.one_shots, self.expected)

    def write_module(self, name: str, source: str) -> Path:
        """Write ``name.py`` into the test directory; ``{queue}``/``{url}`` are filled in."""
        path = self.dir / f"{name}.py"
        text = (
            textwrap.dedent(source).replace("{queue}", self.queue_name).replace("{url}", self.url)
        )
        path.write_text(text)
        return path

    def import_module(self, name: str) -> Any:
        """Import a module written by ``write_module`` into the test process (the producer)."""
        if str(self.dir) not in sys.path:
            sys.path.insert(0, str(self.dir))
        sys.modules.pop(name, None)
        self.modules.append(name)
        return importlib.import_module(name)

    def queue(self, **cfg: Any) -> SkunkQueue:
        queue = SkunkQueue(self.queue_name, url=self.url, **cfg)
        self.queues.append(queue)
        return queue

    def start(self, *args: str, name: str = "proc", clock_shift: float = 0.0) -> Proc:
        """Start ``python -m skunkqueue ARGS`` in the test directory, in its own session;
        with ``clock_shift``, its wall clock runs that many seconds ahead (or behind)."""
        if clock_shift:
            argv = [sys.executable, "-m", "tests.clockshift", "skunkqueue", *args]
            return self.spawn(argv, name, {SHIFT_ENV: repr(clock_shift)})
        return self.spawn([sys.executable, "-m", "skunkqueue", *args], name)

    def spawn(self, argv: list[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        """Start any command in the test directory, in its own session."""
        log = self.dir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.dir,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(popen, log, argv)
        self.procs.append(proc)
        return proc

    def worker(self, *routes: str, extra: tuple[str, ...] = (), scheduler: bool = False) -> Proc:
        """``skunq work``; without its scheduler candidate unless asked, so a scenario's
        own ``skunq scheduler`` processes are the only candidates it reasons about."""
        return self.start(
            "work",
            "-r",
            *routes,
            *extra,
            *(() if scheduler else ("--no-scheduler",)),
            name="worker",
        )

    def scheduler(self, *extra: str) -> Proc:
        return self.start("scheduler", *extra, name="scheduler")

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "skunkqueue", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.one_shots.append((f"skunq {' '.join(args)}", done.stdout + done.stderr))
        return done

    def run_python(self, script: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run_python_argv([sys.executable, script], timeout=timeout)

    def run_python_argv(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv,
            cwd=self.dir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.one_shots.append((f"python {' '.join(argv[1:])}", done.stdout + done.stderr))
        return done

    def wait_for_workers(self, count: int, timeout: float = 15.0) -> None:
        from skunkqueue.persistence.base import WORKER_LEASE_PREFIX

        backend = self.queue().backend
        wait_until(
            lambda: len(backend.leases(WORKER_LEASE_PREFIX, time.time())) >= count,
            timeout,
            what=f"{count} live workers",
        )

    def teardown(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        for name in self.modules:
            module = sys.modules.pop(name, None)
            if module is not None:
                self.queues += [q for q in vars(module).values() if isinstance(q, SkunkQueue)]
        # An open client keeps threads (MongoDB's monitors, a change stream) that the
        # interpreter would otherwise join at exit, long after their server has stopped.
        for queue in {id(q): q for q in self.queues}.values():
            queue.close()
        if str(self.dir) in sys.path:
            sys.path.remove(str(self.dir))


# Every scenario runs on each backend that worker processes can share: (the session
# fixture of its server (tests/conftest.py), or None; the share of job counts it runs).
# Each test has its own queue name.
E2E_BACKENDS = {
    "sqlite": (None, 1.0),
    "redis": ("redis_server", 1.0),
    "redis+cluster": ("redis_cluster", 1.0),
    "mongodb": ("mongo_server", 0.2),
    "fdbsim+tcp": ("fdb_sim_server", 1.0),
}


@pytest.fixture(params=sorted(E2E_BACKENDS))
def e2e(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2E]:
    server_fixture, scale = E2E_BACKENDS[request.param]
    url = request.getfixturevalue(server_fixture).url if server_fixture else None
    world = E2E(tmp_path, url, scale)
    yield world
    call = getattr(request.node, "rep_call", None)
    world.teardown()
    if call is not None and call.failed:
        for proc in world.procs:
            sys.stderr.write(f"\n--- {' '.join(proc.argv[2:])} ---\n{proc.output()[-4000:]}\n")
    elif call is not None and call.passed:
        trouble = world.trouble()
        if trouble:
            listing = "\n\n".join(str(incident)[:3000] for incident in trouble[:10])
            pytest.fail(
                f"the test passed, but its processes logged {len(trouble)} incidents it did "
                f"not expect (declare deliberate ones with e2e.expect):\n\n{listing}"
            )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Redis Cluster runs the same scripts as one Redis (the contract suite proves it
    on both): only the representative scenarios marked "cluster" run on it, the rest are
    deselected (not skipped: a skip is for what could not run)."""
    dropped = [
        item
        for item in items
        if getattr(item, "callspec", None) is not None
        and item.callspec.params.get("e2e") == "redis+cluster"
        and item.get_closest_marker("cluster") is None
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
