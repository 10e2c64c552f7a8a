"""Bounded calls: a backend opened with ``call_timeout`` fails a call on a store that stops
answering within that bound, instead of waiting for the store's own, longer timeouts.

The stores are real: a redis-server and the MongoDB stand-in behind a TCP proxy that
freezes (tests/proxies.py), a SQLite file whose write lock another connection holds. The
FoundationDB mapping (each transaction's timeout option) is tested in
tests/test_fdb_cluster_path.py, where the binding's module can be replaced.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skunkqueue.errors import BackendUnavailable, ConfigurationError
from skunkqueue.persistence import Backend, open_backend
from skunkqueue.persistence.sqlite import BUSY_TIMEOUT, SQLiteBackend

from .contract.support import T0, job
from .drivers import require
from .proxies import FreezingProxy

BOUND = 0.5  # seconds: the call_timeout of the bounded backends here
SLACK = 0.4  # seconds a failing call may take beyond its bound on a busy machine


@pytest.fixture
def opened() -> Iterator[Callable[..., Backend]]:
    """``opened(url, call_timeout=...)`` on one fresh queue; every backend closed at the end."""
    queue, backends = f"bc{uuid.uuid4().hex[:10]}", []

    def open_one(url: str, **options: float) -> Backend:
        backends.append(open_backend(url, queue, **options))
        return backends[-1]

    yield open_one
    for backend in backends:
        backend.close()


def holding_one_job(backend: Backend) -> None:
    """Store a job and claim it for owner ``w``: what a worker's heartbeat renews."""
    backend.put([job("held")], T0)
    assert [r.id for r in backend.claim(["default"], "w", T0, 30)] == ["held"]


def renew_fails_within_the_bound(backend: Backend) -> float:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.renew("w", T0 + 1, 30, ["held"])
    took = time.monotonic() - started
    assert took < BOUND + SLACK, f"renew on a frozen store took {took:.2f} s"
    return took


# -- the option itself ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "5", True])
def test_a_bad_call_timeout_is_refused_before_anything_is_opened(bad: object) -> None:
    # Nothing listens on port 1: reaching the store would raise BackendUnavailable instead.
    for url in ("redis://127.0.0.1:1/0", "memory://bc"):
        with pytest.raises(ConfigurationError, match="call_timeout must be a positive"):
            open_backend(url, "q", call_timeout=bad)  # type: ignore[arg-type]


def test_a_backend_made_directly_checks_its_call_timeout_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="call_timeout"):
        SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db", "q", call_timeout=-2)
    assert not (tmp_path / "jobs.db").exists()  # refused before the file was made


@pytest.mark.parametrize("url", ["memory://bc", "fdbsim://bc"])
def test_a_store_with_nothing_to_wait_on_takes_the_option_and_works(opened, url: str) -> None:
    backend = opened(url, call_timeout=BOUND)
    assert backend.call_timeout == BOUND
    holding_one_job(backend)
    assert backend.renew("w", T0 + 1, 30, ["held"]) == {"held"}


def test_without_the_option_a_backend_keeps_its_own_timeouts(opened, tmp_path: Path) -> None:
    backend = opened(f"sqlite:///{tmp_path}/jobs.db")
    assert backend.call_timeout is None
    assert backend._db.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT * 1000


# -- SQLite: the busy timeout -----------------------------------------------------------


def test_sqlite_waits_for_a_held_write_lock_no_longer_than_the_bound(opened, tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    backend = opened(url, call_timeout=BOUND)
    assert backend._db.execute("PRAGMA busy_timeout").fetchone()[0] == BOUND * 1000
    holding_one_job(backend)
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer that never commits
        took = renew_fails_within_the_bound(backend)
        assert took >= BOUND * 0.9  # it did wait for the lock, as long as allowed
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert backend.renew("w", T0 + 2, 30, ["held"]) == {"held"}  # the lock is free again


# -- Redis: socket timeouts, no resend after a timeout -----------------------------------


@pytest.fixture
def redis_proxy(redis_server) -> Iterator[FreezingProxy]:
    require("redis")
    with FreezingProxy(redis_server.port) as proxy:
        yield proxy


def test_redis_fails_a_call_on_a_frozen_server_within_the_bound(opened, redis_proxy) -> None:
    backend = opened(f"redis://127.0.0.1:{redis_proxy.port}/0", call_timeout=BOUND)
    holding_one_job(backend)
    redis_proxy.freeze()
    renew_fails_within_the_bound(backend)
    redis_proxy.thaw()
    # The stuck connection was dropped: the next call goes out on a new one.
    assert backend.renew("w", T0 + 2, 30, ["held"]) == {"held"}


@pytest.mark.parametrize(
    "query, bound, expected",
    [
        ("", BOUND, BOUND),  # below the defaults
        ("", 60.0, None),  # never above them: the defaults stay
        ("?socket_timeout=0.2&socket_connect_timeout=0.3", BOUND, (0.2, 0.3)),  # the URL's, smaller
        ("?socket_timeout=20&socket_connect_timeout=20", BOUND, BOUND),  # the bound, smaller
    ],
)
def test_redis_takes_the_smaller_of_its_timeouts_and_the_bound(
    opened, redis_server, query: str, bound: float, expected: object
) -> None:
    from skunkqueue.persistence.redis_support import CONNECT_TIMEOUT, SOCKET_TIMEOUT

    redis = require("redis")
    backend = opened(redis_server.url + query, call_timeout=bound)
    settings = backend._client.connection_pool.connection_kwargs
    if expected is None:
        expected = (SOCKET_TIMEOUT, CONNECT_TIMEOUT)
    elif not isinstance(expected, tuple):
        expected = (expected, expected)
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == expected
    # A command that timed out is not retried (it would wait again); a dropped one is.
    retry = settings["retry"]
    assert retry.get_retries() == 1 and retry._supported_errors == (redis.ConnectionError,)


def test_redis_a_bounded_call_is_resent_after_a_dropped_connection(opened, redis_server) -> None:
    """A connection closed while idle (a restart, a proxy's idle timeout) costs no failed
    call: only a call that waited in vain is not resent."""
    redis = require("redis")
    backend = opened(redis_server.url, call_timeout=BOUND)
    holding_one_job(backend)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        assert admin.client_kill_filter(_type="normal", skipme=True) > 0
    finally:
        admin.close()
    assert backend.renew("w", T0 + 1, 30, ["held"]) == {"held"}


def test_a_bounded_backend_works_on_a_redis_cluster(opened, redis_cluster) -> None:
    backend = opened(redis_cluster.url, call_timeout=BOUND)
    holding_one_job(backend)
    assert backend.renew("w", T0 + 1, 30, ["held"]) == {"held"}
    for node in backend._client.get_nodes():
        assert node.redis_connection.connection_pool.connection_kwargs["socket_timeout"] == BOUND


# -- MongoDB: one deadline per call --------------------------------------------------------


@pytest.fixture
def mongo_proxy(mongo_server) -> Iterator[FreezingProxy]:
    require("pymongo")
    if not hasattr(mongo_server, "port"):
        pytest.skip("SKUNKQUEUE_TEST_MONGO_URL: no local server to put a proxy in front of")
    with FreezingProxy(mongo_server.port) as proxy:
        yield proxy


def test_mongodb_fails_a_call_on_a_frozen_server_within_the_bound(opened, mongo_proxy) -> None:
    url = f"mongodb://127.0.0.1:{mongo_proxy.port}/skunkqueue_test?directConnection=true"
    opened(url)  # makes the indexes, once per process: the stand-in is slow at it
    backend = opened(url, call_timeout=BOUND)
    holding_one_job(backend)
    mongo_proxy.freeze()
    # socketTimeoutMS=500 alone lets a frozen renew wait about 1.5 s: a retried read
    # waits for server selection and a reply again. One deadline spans the whole call.
    renew_fails_within_the_bound(backend)
    mongo_proxy.thaw()
    assert backend.renew("w", T0 + 2, 30, ["held"]) == {"held"}


@pytest.mark.parametrize(
    "query, bound, expected",
    [
        ("", BOUND, BOUND),
        ("", 60.0, 10.0),  # capped by the default socket timeout (SOCKET_TIMEOUT_MS)
        ("&socketTimeoutMS=300", BOUND, 0.3),
        ("&timeoutMS=200", BOUND, 0.2),
        ("&socketTimeoutMS=30000", BOUND, BOUND),
    ],
)
def test_mongodb_takes_the_smallest_of_its_timeouts_and_the_bound(
    opened, mongo_server, query: str, bound: float, expected: float
) -> None:
    require("pymongo")
    if "?" not in mongo_server.url:
        query = "?" + query.lstrip("&")
    backend = opened(mongo_server.url + query, call_timeout=bound)
    assert backend._budget == expected
