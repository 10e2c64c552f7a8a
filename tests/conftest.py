"""Shared fixtures: real servers, started once per test session on free loopback ports."""

from __future__ import annotations

import fnmatch
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import ExternalMongo, FdbSimServer, MongoServer, RedisCluster, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the tests' own; tests share it but never a queue name."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local three-master Redis Cluster."""
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def fdb_sim_server() -> Iterator[FdbSimServer]:
    """The FoundationDB simulator in a process of its own, for tests whose worker and
    scheduler processes must share one store (no FoundationDB cluster can run here)."""
    server = FdbSimServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MongoServer | ExternalMongo]:
    """A MongoDB for the tests: ``$SKUNKQUEUE_TEST_MONGO_URL`` if set (started by nobody
    here), else a SecantusDB ``secantusd-py`` of the tests' own. ``.url`` names the database;
    tests share it but never a collection or queue name."""
    external = os.environ.get("SKUNKQUEUE_TEST_MONGO_URL")
    if external:
        yield ExternalMongo(external)
        return
    server = MongoServer(Path(tmp_path_factory.mktemp("mongo"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_standalone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A SecantusDB answering as a standalone MongoDB: no replica set, so no change streams
    and no transactions (what a backend does without them is tested on it)."""
    server = MongoServer(Path(tmp_path_factory.mktemp("standalone")), standalone=True).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each embedded backend (a test module may override this)."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path}/jobs.db"


# -- skips said out loud -------------------------------------------------------------------

EXPECTED_SKIPS = Path(__file__).with_name("expected_skips.txt")


def _expected_skips() -> list[tuple[str, str]]:
    """(node id pattern, reason fragment) pairs: the skips CI accepts, each with its why."""
    pairs = []
    for line in EXPECTED_SKIPS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, reason = (part.strip() for part in line.split("|", 1))
            pairs.append((pattern, reason))
    return pairs


_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        _skipped.append((report.nodeid, str(report.longrepr[2])))


def unexpected_skips(
    skipped: list[tuple[str, str]], allowed: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The (node id, reason) skips that no (node id pattern, reason fragment) allows."""
    return [
        (nodeid, reason)
        for nodeid, reason in skipped
        if not any(fnmatch.fnmatch(nodeid, p) and r in reason for p, r in allowed)
    ]


def _unexpected_skips() -> list[tuple[str, str]]:
    return unexpected_skips(_skipped, _expected_skips())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    unexpected = _unexpected_skips()
    if unexpected:
        terminalreporter.section("skips not in tests/expected_skips.txt")
        for nodeid, reason in unexpected:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under CI a skip nobody expected fails the run: a missing server or driver, or a
    # test that stopped running, must not pass as green.
    if os.environ.get("CI") and _unexpected_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
