"""Real servers for the tests, started on free loopback ports and stopped by PID.

A test that needs a server binary that is not installed is skipped with the reason on a
developer's machine, and fails when ``CI`` is set: CI must never go green by silently
testing nothing.

MongoDB tests run against SecantusDB (``secantusd-py``), a GPL MongoDB-compatible server
used only as a test tool: it is run as a separate process, never imported, and never a
dependency of the package (``.ci/run`` installs it into its own virtualenv, .tools/secantus).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port for a cluster node: at most 55535, with port + 10000 (its cluster bus) free."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


REPO_ROOT = Path(__file__).resolve().parent.parent


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: .ci/run must install it)")
    pytest.skip(message)


def require_binary(
    name: str, env: str | None = None, fallback: Path | None = None, hint: str = ""
) -> str:
    """The binary's path: from the variable ``env`` if set, else PATH, else ``fallback``."""
    if env and os.environ.get(env):
        path = os.environ[env]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            _missing(f"{env}={path} is not an executable file")
        return path
    found = shutil.which(name)
    if found is None and fallback is not None and os.access(fallback, os.X_OK):
        found = str(fallback)
    if found is None:
        _missing(f"{name} is not installed{hint}")
    return found


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Stop by PID: send ``sig``, wait, and SIGKILL if it is still running at the deadline."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``restart`` keeps its port, directory and data files."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.binary = require_binary("redis-server")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(
                    f"redis-server on port {self.port} did not start:\n{log[-2000:]}"
                )
            time.sleep(0.02)  # pause: poll interval of a loop with a deadline
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop by PID: SIGTERM is a clean shutdown, SIGKILL a crash."""
        stop_process(self.proc, sig, timeout)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


class RedisCluster:
    """Three masters, no replicas, on loopback ports: enough to spread hash slots."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.cli = require_binary("redis-cli")
        self.nodes = [
            RedisServer(
                directory / f"node{i}", free_cluster_port(), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
            )
            for i in range(masters)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                info = subprocess.run(
                    [self.cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cluster node {node.port} never reached cluster_state:ok:\n{info}"
                    )
                time.sleep(0.05)  # pause: poll interval of a loop with a deadline
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class MongoServer:
    """One SecantusDB ``secantusd-py`` process: a single-node replica set, data in memory.

    The binary is ``$SKUNKQUEUE_SECANTUSD``, else ``secantusd-py`` on PATH, else the one
    ``.ci/run`` installs into .tools/secantus. Its own temp files and log go to ``directory``.
    """

    def __init__(
        self, directory: Path, port: int | None = None, *, standalone: bool = False
    ) -> None:
        self.binary = require_binary(
            "secantusd-py",
            env="SKUNKQUEUE_SECANTUSD",
            fallback=REPO_ROOT / ".tools" / "secantus" / "bin" / "secantusd-py",
            hint=" (python3 -m venv .tools/secantus && .tools/secantus/bin/pip install secantusdb)",
        )
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        #: Answer as a standalone server (no replica set, so no change streams) instead
        #: of a single-node replica set.
        self.standalone = standalone
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/skunkqueue_test?directConnection=true"

    @property
    def log(self) -> Path:
        return self.dir / f"secantusd-{self.port}.log"

    def _without_ttl_monitor(self) -> list[str]:
        """The command that starts the stand-in with its TTL monitor off.

        The contract tests drive time with a clock of 2023 (``support.T0``), so on the real
        clock every record they finish has long expired: a monitor pass (every minute)
        deleted records under running tests and stalled the server while it deleted
        thousands, long enough to time out the lease renewals of end-to-end processes.
        Nothing here tests the monitor itself (that is MongoDB's; test_mongo_backend checks
        the ``expire_on`` it reads). secantusd-py's command line cannot turn it off (its
        config file's ``ttl_sweep_seconds`` is read but not passed on), so its own Python
        runs its command line with the server's ``ttl_sweep_seconds=0``: still a separate
        process, in the stand-in's own virtualenv. A binary without that Python beside it
        (``$SKUNKQUEUE_SECANTUSD`` elsewhere) runs as it is, monitor on.
        """
        python = Path(self.binary).with_name("python3")
        if not python.exists():
            return [self.binary]
        launch = (
            "import functools, sys; from secantus import cli; "
            "cli.SecantusDBServer = functools.partial(cli.SecantusDBServer, ttl_sweep_seconds=0); "
            "sys.exit(cli.main(sys.argv[1:]))"
        )
        return [str(python), "-c", launch]

    def start(self, timeout: float = 30.0) -> MongoServer:
        import pymongo
        import pymongo.errors

        # An empty --config turns off the search for ./secantusd.toml and ~/.secantus/.
        config = self.dir / "secantusd.toml"
        config.touch()
        options = [
            "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", ":memory:", "--log-level", "WARNING",
            *(["--standalone"] if self.standalone else []),
        ]  # fmt: skip
        argv = [*self._without_ttl_monitor(), *options]
        # ':memory:' is a temp directory: keep it (and any left by a kill) under self.dir.
        env = {**os.environ, "TMPDIR": str(self.dir)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, env=env, start_new_session=True,
            )  # fmt: skip
        client: pymongo.MongoClient = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return self
                except pymongo.errors.PyMongoError as exc:
                    error = exc
                code = self.proc.poll()
                if code is not None or time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    why = f"exited with {code}" if code is not None else f"no ping in {timeout} s"
                    log_text = self.log.read_text(errors="replace") if self.log.exists() else ""
                    raise RuntimeError(
                        f"secantusd-py on port {self.port} did not start ({why}; last error: "
                        f"{str(error).splitlines()[0][:200]}):\n{log_text[-2000:]}"
                    )
                time.sleep(0.05)  # pause: poll interval of a loop with a deadline
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop by PID: SIGTERM is a clean shutdown (its temp data is removed), SIGKILL a crash."""
        stop_process(self.proc, sig, timeout)


@dataclass(frozen=True)
class ExternalMongo:
    """A MongoDB the user runs (``SKUNKQUEUE_TEST_MONGO_URL``): the tests start nothing."""

    url: str


class FdbSimServer:
    """``python -m skunkqueue.testing.fdb_sim``: the FoundationDB simulator served on a
    free loopback port, so worker and scheduler processes share one store."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"fdbsim+tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> FdbSimServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skunkqueue.testing.fdb_sim", "--port", "0"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            stop_process(self.proc, signal.SIGKILL, 5)
            raise RuntimeError(f"the FoundationDB simulator printed no port within {timeout} s")
        line = self.proc.stdout.readline().decode()
        self.port = int(line.rsplit(":", 1)[-1])
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)
