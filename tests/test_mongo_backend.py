"""What the MongoDB backend promises beyond the contract suite (whose test_wait.py covers
its prompt wake-ups): change streams on a replica set, a bounded polling fallback,
indexes made and migrated at startup, index walks for every hot query, majority writes
on a replica set, records kept for the TTL monitor, and errors that name the server. Runs against the session's MongoDB (the SecantusDB stand-in
started by the fixtures, or SKUNKQUEUE_TEST_MONGO_URL).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from skunkqueue.config import QueueConfig
from skunkqueue.errors import BackendUnavailable, ConfigurationError
from skunkqueue.persistence import open_backend
from skunkqueue.persistence.mongodb import BY_ID, INDEXES, JOBS, POLL_MAX, MongoBackend

from .contract.support import job
from .drivers import require
from .servers import MongoServer, free_port

pymongo = require("pymongo")

DEADLINE = 5.0  # seconds a wait may block here; a wake-up must come far sooner


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def opened(mongo_server) -> Iterator[Callable[..., MongoBackend]]:
    """Open more backends on one fresh queue; all are closed at the end."""
    queue, backends = f"mt-{uuid.uuid4().hex[:10]}", []

    def open_one(url: str | None = None) -> MongoBackend:
        backends.append(open_backend(url or mongo_server.url, queue))
        return backends[-1]

    yield open_one
    for backend in backends:
        backend.close()


# -- wake-ups -------------------------------------------------------------------------


def test_a_replica_set_gives_change_stream_wake_ups(opened):
    assert opened().wake_mode == "change streams"


@pytest.fixture(scope="module")
def standalone_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stand-in server answering as a standalone MongoDB: no replica set, no change streams."""
    server = MongoServer(Path(tmp_path_factory.mktemp("standalone")), standalone=True).start()
    yield server.url
    server.stop()


def test_a_standalone_server_is_polled_and_written_with_its_default_acknowledgement(
    opened, standalone_url
):
    backend = opened(standalone_url)
    assert backend.wake_mode == "polling (10-500 ms)" and backend._watcher is None
    assert backend._jobs.write_concern.document == {}


def test_polling_finds_a_new_job_within_its_longest_interval(opened, standalone_url):
    producer, poller = opened(standalone_url), opened(standalone_url)
    poller._idle_polls = 10  # backed off to the longest interval
    producer.put([job("polled")], time.time())
    # Polling sleeps its interval before it looks: the job is found at the first look.
    started = time.monotonic()
    poller.wait(DEADLINE, ["default"])
    took = time.monotonic() - started
    assert POLL_MAX * 0.9 <= took <= POLL_MAX + 0.3, took
    assert poller._idle_polls == 0  # work found: the next wait polls quickly again
    assert [j.id for j in poller.claim(["default"], "w", time.time(), 30)] == ["polled"]


# -- indexes and query plans ------------------------------------------------------------


def test_indexes_exist_and_a_changed_definition_is_rebuilt(mongo_server):
    url = with_database(mongo_server.url, f"sq_idx_{uuid.uuid4().hex[:8]}")
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    jobs = client.get_default_database()[JOBS]
    try:
        jobs.create_index([("q", 1), ("eta", 1)], name="ready")  # an old, different "ready"
        backend = open_backend(url, "idx")
        backend.close()
        found = jobs.index_information()
        for name, (keys, options) in INDEXES[JOBS].items():
            assert [tuple(k) for k in found[name]["key"]] == keys, name
            for option, value in options.items():
                assert found[name][option] == value, (name, option)
    finally:
        client.drop_database(client.get_default_database())
        client.close()


def _stages(plan: dict) -> list[str]:
    stages = [plan.get("stage", "")]
    for key in ("inputStage", "outerStage", "innerStage"):
        if key in plan:
            stages += _stages(plan[key])
    for child in plan.get("inputStages", []):
        stages += _stages(child)
    return stages


def test_hot_queries_walk_indexes_and_never_scan_the_collection(opened):
    backend = opened()
    now = time.time()
    backend.put([job(f"j{i}", route="abc"[i % 3], eta=now - i) for i in range(60)], now)
    backend.put([job(f"s{i}", eta=now + 60 + i) for i in range(20)], now)
    jobs, q = backend._jobs, backend.queue
    queries = {
        "claim: first queued on routes": jobs.find(
            {"q": q, "state": "queued", "route": {"$in": ["a", "b"]}}
        ).sort([("eta", 1), ("seq", 1)]),
        "claim: read back by token": jobs.find(
            {"_id": {"$in": [backend._key("j1"), backend._key("j2")]}, "claim": "t"},
            hint=BY_ID,  # as the backend asks
        ),
        "promote: due": jobs.find(
            {"q": q, "state": {"$in": ["retrying", "scheduled"]}, "eta": {"$lte": now}},
            hint="waiting",  # as the backend asks
        ).sort([("eta", 1), ("seq", 1)]),
        "promote: lapsed leases": jobs.find(
            {"q": q, "state": "running", "lease_until": {"$lt": now}}
        ),
        "promote: expired": jobs.find({"q": q, "expires_at": {"$lte": now}}),
        "promote: earliest lease end": jobs.find(
            {"q": q, "state": "running", "lease_until": {"$ne": None}},
            hint="leased",  # as the backend asks
        ).sort([("lease_until", 1)]),
        "listing: all states": jobs.find(
            {"q": q, "$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]},
            hint="expiry",  # as the backend asks
        ).sort([("eta", 1), ("seq", 1)]),
        "renew: held by owner": jobs.find(
            {"q": q, "owner": "w", "state": "running"},
            hint="held",  # as the backend asks
        ),
    }
    for name, cursor in queries.items():
        stages = _stages(cursor.explain()["queryPlanner"]["winningPlan"])
        assert "COLLSCAN" not in stages, (name, stages)
        assert any("IXSCAN" in s or s in ("IDHACK", "EXPRESS_IXSCAN") for s in stages), (
            name,
            stages,
        )


# -- durability and expiry ------------------------------------------------------------------


def test_writes_are_majority_acknowledged_on_a_replica_set(opened):
    assert opened()._jobs.write_concern.document == {"w": "majority"}


def test_a_finished_record_carries_a_date_for_the_ttl_monitor(opened):
    backend = opened()
    now = time.time()
    backend.put([job("ttl", result_ttl=60)], now)
    (claimed,) = backend.claim(["default"], "w", now, 30)
    from skunkqueue.jobs import Outcome

    assert backend.finish([Outcome("ttl", "complete", result='"ok"')], "w", now) == [True]
    stored = backend._jobs.find_one({"_id": backend._key("ttl")})
    assert isinstance(stored["expire_on"], datetime)
    assert abs(stored["expire_on"].timestamp() - (now + 60)) < 0.01
    # Past expires_at but not yet removed by the TTL monitor: gone for every reader.
    later = now + 61
    assert backend.get("ttl", later) is None
    assert backend.list_jobs(later) == []
    assert backend.stats(later).counts == {}
    assert backend.put([job("ttl")], later) == [True]  # the id is free again


# -- opening --------------------------------------------------------------------------------


def test_seed_form_names_localhost_and_the_skunkqueue_database():
    from skunkqueue.persistence.mongodb import default_cfg

    config = QueueConfig.from_kwargs("demo", **default_cfg)
    assert config.url == "mongodb://localhost:27017/skunkqueue"


def test_unreachable_server_is_named_without_its_password():
    port = free_port()  # nothing listens there
    url = f"mongodb://user:s3cret@127.0.0.1:{port}/db?serverSelectionTimeoutMS=300"
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(url, "q")
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_malformed_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        open_backend("mongodb://host:notaport/db", "q")


def test_queue_names_with_the_id_separator_are_refused(mongo_server):
    with pytest.raises(ConfigurationError):
        open_backend(mongo_server.url, "bad\x1fname")
