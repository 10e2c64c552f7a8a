"""Shared fixtures: real servers, started once per test session on free loopback ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each embedded backend (a test module may override this)."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path}/jobs.db"
