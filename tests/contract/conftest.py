"""The ``backend`` fixture: every contract test runs once per backend, on a fresh store.

To add a backend, append one ``BackendSpec`` to ``BACKENDS``. A backend that needs a
server sets ``server=True``: where the server is unreachable its tests are *skipped* on a
developer's machine and *fail* when the ``CI`` environment variable is set, so CI can
never go green by silently testing nothing (STYLE.md item 12).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skunkqueue.persistence import Backend, open_backend

from .support import T0


@dataclass(frozen=True)
class BackendSpec:
    """How to reach one backend from a test.

    ``url(tmp_path, unique)`` returns the URL a test opens; ``unique`` is a fresh name per
    test. A backend whose server the tests start themselves names the session fixture
    that starts it in ``fixture``; the URL is then that fixture's ``.url``. Every test
    also gets its own queue name, so tests never see each other's data even on a
    shared server.
    """

    id: str
    url: Callable[[Path, str], str] | None = None
    server: bool = False
    fixture: str | None = None
    #: Jobs the claim-contention tests (test_exclusivity.py) put and drain.
    contention_jobs: int = 400
    #: Set for a variant that only some tests run on: those marked with it. The rest are
    #: deselected on it (not skipped: a skip is for what could not run).
    only_marked: str | None = None


BACKENDS = [
    BackendSpec("memory", lambda tmp, unique: f"memory://{unique}"),
    BackendSpec("sqlite", lambda tmp, unique: f"sqlite:///{tmp}/jobs.db"),
    BackendSpec("redis", server=True, fixture="redis_server"),
    BackendSpec("redis+cluster", server=True, fixture="redis_cluster"),
    # SecantusDB (the stand-in server) runs tens of claims per second: the contention
    # tests use fewer jobs there, the same number against a real MongoDB.
    BackendSpec("mongodb", server=True, fixture="mongo_server", contention_jobs=120),
    # The stand-in answering as a standalone server: no transactions, so fire_schedule and
    # fenced saves take their fallback path (MongoBackend docs). Only the schedule tests
    # (marked "schedules") run on it: every other verb is the same on both.
    BackendSpec(
        "mongodb-standalone",
        server=True,
        fixture="mongo_standalone_server",
        only_marked="schedules",
    ),
    # FoundationDB through the simulator (skunkqueue/testing/fdb_sim.py): in-process,
    # and served to several processes; a real cluster, where one runs, is "fdb".
    BackendSpec("fdbsim", lambda tmp, unique: f"fdbsim://{unique}"),
    BackendSpec("fdbsim+tcp", server=True, fixture="fdb_sim_server"),
    # A real FoundationDB cluster, only where one is named (tests/test_fdb_backend.py
    # reports the skip with its reason when it is not).
    *(
        [
            BackendSpec(
                "fdb",
                lambda tmp, unique: f"fdb://{os.environ['SKUNKQUEUE_TEST_FDB_CLUSTER']}",
                server=True,
            )
        ]
        if os.environ.get("SKUNKQUEUE_TEST_FDB_CLUSTER")
        else []
    ),
]

# What "the server is not there" looks like when opening or first using a backend:
# a missing driver (extra not installed) or a refused / timed-out connection.
UNREACHABLE = (ImportError, ConnectionError, OSError, TimeoutError)


def _open_checked(spec: BackendSpec, url: str, queue: str) -> Backend:
    """Open ``url``; for a server backend, prove the server answers, else skip (or fail in CI)."""
    if not spec.server:
        return open_backend(url, queue)
    try:
        backend = open_backend(url, queue)
        backend.stats(T0)  # a round trip: opening alone may be lazy
    except UNREACHABLE as exc:  # BackendUnavailable is a ConnectionError
        message = f"{spec.id} backend at {url!r} is unreachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so a missing server is a failure)")
        pytest.skip(message)
    return backend


@dataclass
class Opened:
    """The URL and queue of this test's store, and a way to open more instances of it."""

    spec: BackendSpec
    url: str
    queue: str
    _opened: list[Backend]

    def open(self, queue: str | None = None) -> Backend:
        """Another ``Backend`` on the same store (same queue unless ``queue`` is given)."""
        backend = _open_checked(self.spec, self.url, queue or self.queue)
        self._opened.append(backend)
        return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A backend variant with ``only_marked`` runs only the tests marked with it."""
    dropped = []
    for item in items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("store")
        marker = getattr(spec, "only_marked", None)
        if marker is not None and item.get_closest_marker(marker) is None:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(params=BACKENDS, ids=lambda spec: spec.id)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    spec: BackendSpec = request.param
    unique = uuid.uuid4().hex[:12]
    if spec.fixture is not None:
        url = request.getfixturevalue(spec.fixture).url
    else:
        assert spec.url is not None, f"{spec.id}: a BackendSpec needs url or fixture"
        url = spec.url(tmp_path, f"contract-{unique}")
    opened = Opened(spec, url, f"q-{unique}", [])
    yield opened
    for backend in reversed(opened._opened):
        backend.close()


@pytest.fixture
def backend(store: Opened) -> Backend:
    """A fresh, empty queue on the backend under test."""
    return store.open()
