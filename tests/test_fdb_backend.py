"""What the FoundationDB backend promises beyond the contract suite (whose test_wait.py
covers its wake-ups by watches): records that fit FoundationDB's limits or are refused, large puts split into transactions
far inside the 10 MB limit, the seed's import paths, and the real-cluster run where one
exists. Runs against the simulator (skunkqueue/testing/fdb_sim.py); no FoundationDB
cluster or client library can be installed here.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from skunkqueue.config import QueueConfig
from skunkqueue.errors import BackendUnavailable, ConfigurationError, SerializationError
from skunkqueue.persistence import Backend, open_backend
from skunkqueue.persistence.fdb import MAX_RECORD_BYTES, PAGE, PUT_BYTES
from skunkqueue.testing import fdb_sim

from .contract.conftest import BACKENDS as CONTRACT_BACKENDS
from .contract.support import T0, job
from .servers import free_port

DEADLINE = 5.0  # seconds a thread of these tests may take


@pytest.fixture(params=["fdbsim", "fdbsim+tcp"])
def opened(request: pytest.FixtureRequest) -> Iterator[Callable[[], Backend]]:
    """Open more backends on one fresh queue of the simulator (in-process or served)."""
    if request.param == "fdbsim":
        url = f"fdbsim://{uuid.uuid4().hex}"
    else:
        url = request.getfixturevalue("fdb_sim_server").url
    queue, backends = f"ft-{uuid.uuid4().hex[:10]}", []

    def open_one() -> Backend:
        backends.append(open_backend(url, queue))
        return backends[-1]

    yield open_one
    for backend in backends:
        backend.close()


def test_a_record_over_the_value_limit_is_refused_and_nothing_is_written(opened):
    backend = opened()
    huge = job("huge", payload="x" * MAX_RECORD_BYTES)
    with pytest.raises(SerializationError, match="100,000-byte value limit"):
        backend.put([job("small"), huge], T0)
    assert backend.list_jobs(T0) == []


def test_a_put_larger_than_one_transaction_is_stored_whole(opened):
    backend = opened()
    payload = "y" * 90_000  # each record just under the value limit
    jobs = [job(f"big-{i:02}", payload=payload) for i in range(2 * PUT_BYTES // 90_000 + 3)]
    assert backend.put(jobs, T0) == [True] * len(jobs)
    claimed = backend.claim(["default"], "w", T0, 30, limit=len(jobs))
    assert [j.id for j in claimed] == [j.id for j in jobs]


def test_seed_import_paths_name_the_default_cluster():
    from skunkqueue.persistence.fdb import default_cfg
    from skunkqueue.persistence.foundation import default_cfg as seed_cfg

    assert seed_cfg == default_cfg
    assert QueueConfig.from_kwargs("demo", **default_cfg).url == "fdb://"
    assert QueueConfig.from_kwargs("demo", backend="foundation").url == "fdb://"


def test_real_cluster_suite():
    """The contract suite runs against a real cluster as the backend "fdb" when
    SKUNKQUEUE_TEST_FDB_CLUSTER names a cluster file and libfdb_c loads."""
    cluster = os.environ.get("SKUNKQUEUE_TEST_FDB_CLUSTER")
    if not cluster:
        pytest.skip(
            "SKUNKQUEUE_TEST_FDB_CLUSTER is not set: no FoundationDB cluster here, so the "
            "contract suite ran against the simulator only"
        )
    # With the variable set, tests/contract/conftest.py adds the backend "fdb": the whole
    # contract suite (the property test included) runs on the cluster, not a smoke test.
    assert "fdb" in [spec.id for spec in CONTRACT_BACKENDS]
    backend = open_backend(f"fdb://{cluster}", f"ft-{uuid.uuid4().hex[:10]}")
    try:
        assert backend.put([job("real")], T0) == [True]
        assert backend.get("real", T0) is not None
    finally:
        backend.close()


def test_a_listing_longer_than_one_transaction_page_sees_every_record(opened):
    backend = opened()
    n = PAGE + PAGE // 2
    assert backend.put([job(f"l{i:05}", eta=T0 - i) for i in range(n)], T0) == [True] * n
    listed = backend.list_jobs(T0, limit=n + 10)
    assert [r.id for r in listed] == [f"l{i:05}" for i in reversed(range(n))]


def test_concurrent_producers_never_conflict(monkeypatch):
    """Each put's seq is its commit's versionstamp: no counter that every producer reads."""
    conflicts = []
    original = fdb_sim.SimTransaction.on_error

    def counting(tr, err):
        conflicts.append(getattr(err, "code", None))
        return original(tr, err)

    monkeypatch.setattr(fdb_sim.SimTransaction, "on_error", counting)
    url, queue = f"fdbsim://{uuid.uuid4().hex}", "producers"
    backends = [open_backend(url, queue) for _ in range(4)]
    start = threading.Barrier(len(backends))

    def produce(index: int) -> None:
        start.wait(DEADLINE)
        for i in range(50):
            assert backends[index].put([job(f"p{index}-{i:02}")], T0) == [True]

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 4)
    assert conflicts == []
    claimed = backends[0].claim(["default"], "w", T0, 30, limit=250)
    assert len(claimed) == 200
    for index in range(len(backends)):  # each producer's jobs leave in the order it put them
        mine = [r.id for r in claimed if r.id.startswith(f"p{index}-")]
        assert mine == sorted(mine)


def test_a_simulator_url_without_a_listener_or_a_port_fails_clearly():
    with pytest.raises(BackendUnavailable, match="no FoundationDB simulator"):
        open_backend(f"fdbsim+tcp://127.0.0.1:{free_port()}", "q")
    with pytest.raises(ConfigurationError, match="needs host:port"):
        open_backend("fdbsim+tcp://127.0.0.1", "q")
