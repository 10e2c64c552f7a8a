"""What the MongoDB backend promises beyond the contract suite (whose test_wait.py covers
its prompt wake-ups): change streams on a replica set, a bounded polling fallback,
indexes made and migrated at startup, index walks for every hot query, majority writes
on a replica set, records kept for the TTL monitor, and errors that name the server. Runs against the session's MongoDB (the SecantusDB stand-in
started by the fixtures, or SKUNKQUEUE_TEST_MONGO_URL).
"""

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from skunkqueue.config import QueueConfig
from skunkqueue.errors import BackendUnavailable, ConfigurationError, LeaseLost
from skunkqueue.persistence import Fence, ScheduleRecord, open_backend
from skunkqueue.persistence.base import SCHEDULER_LEASE
from skunkqueue.persistence.mongodb import INDEXES, JOBS, POLL_MAX, MongoBackend

from .contract.support import T0, job
from .drivers import require
from .proxies import FreezingProxy
from .servers import MongoServer, free_port
from .waiting import timed_wait

pymongo = require("pymongo")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

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


@pytest.fixture
def standalone_url(mongo_standalone_server: MongoServer) -> str:
    """A stand-in server answering as a standalone MongoDB: no replica set, no change streams."""
    return mongo_standalone_server.url


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


def test_a_wait_of_a_backend_with_a_call_timeout_lasts_as_long_as_asked(standalone_url):
    """The call bound spans each of a wait's polls, not the wait: a poll after it would
    otherwise fail with a timeout."""
    backend = open_backend(standalone_url, f"mt-{uuid.uuid4().hex[:10]}", call_timeout=0.2)
    try:
        backend._idle_polls = 0  # polls every 10 ms at first, each a query
        took = timed_wait(backend, 0.6, ["nothing-here"])()
    finally:
        backend.close()
    assert 0.55 <= took < DEADLINE, took


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


def test_every_query_the_backend_sends_walks_an_index(mongo_server):
    """The commands claim, renew, finish and sweep really send, captured with pymongo's
    command monitoring (benchmarks/bench_mongo.py's explain check, the one the benchmark
    publishes), each explained: none scans the collection, each walks an index."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench_mongo = importlib.import_module("bench_mongo")
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = bench_mongo.explain_check(mongo_server.url, queued=60, scheduled=20)
    assert set(report["verbs"]) == {"claim", "renew", "finish", "sweep"}
    for verb, group in report["verbs"].items():
        assert group["queries"] > 0, f"{verb} sent no query: nothing was explained"
        plans = [shape["plan"] for shape in group["shapes"]]
        assert group["collection_scans"] == 0, (verb, plans)
        assert all(shape["index_walks"] > 0 for shape in group["shapes"]), (verb, plans)


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


# -- a put the server refuses in part ----------------------------------------------------


def test_a_job_the_server_refuses_stops_no_other_and_a_second_put_completes_the_call(
    mongo_server,
):
    """The unit of a put is each job (one unordered insert_many): a document the server
    refuses, here by a validator set on the jobs collection (code 121), is not written,
    every other document is, whatever its place, and the refusal is raised as pymongo's
    BulkWriteError, which names the refused jobs."""
    url = with_database(mongo_server.url, f"sq_put_{uuid.uuid4().hex[:8]}")
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    database = client.get_default_database()
    backend = open_backend(url, "refused")
    try:
        assert backend.put([job("first")], T0) == [True]  # the collection exists
        database.command("collMod", JOBS, validator={"payload": {"$ne": '"refused"'}})
        jobs = [job(f"j{i}", payload='"refused"' if i == 3 else f'"{i}"') for i in range(8)]
        with pytest.raises(pymongo.errors.BulkWriteError) as raised:
            backend.put(jobs, T0)
        errors = raised.value.details["writeErrors"]
        assert [(e["index"], e["code"]) for e in errors] == [(3, 121)]
        assert [backend.get(j.id, T0) is not None for j in jobs] == [i != 3 for i in range(8)]

        database.command("collMod", JOBS, validator={})  # the server takes it now
        assert backend.put(jobs, T0) == [i == 3 for i in range(8)]
        stored = backend.list_jobs(T0)
        assert [r.id for r in stored] == ["first", *(f"j{i}" for i in range(8) if i != 3), "j3"]
        assert [r.payload for r in stored[1:]] == [j.payload for j in jobs if j.id != "j3"] + [
            '"refused"'
        ]
    finally:
        backend.close()
        client.drop_database(database)
        client.close()


# -- a leader stalled between its fence check and its write ---------------------------------


class StallsAfterTheCheck:
    """The leader's lease collection, stalled at the worst moment: a successor takes the
    lease over (and fires the schedule) right after the leader's first read of the lease,
    its fence check, or right before its first write to it, a fence carried in the
    write: whichever comes first. Every call goes on to the real collection."""

    def __init__(self, collection: Any, take_over: Callable[[], None]) -> None:
        self._collection = collection
        self._take_over = take_over
        self.taken_over = False

    def _stall(self) -> None:
        if not self.taken_over:
            self.taken_over = True
            self._take_over()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._collection, name)
        if not callable(real):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if name.startswith(("update", "replace", "insert", "delete")):
                self._stall()
            result = real(*args, **kwargs)
            if name.startswith("find"):
                self._stall()
            return result

        return call


@pytest.mark.parametrize("verb", ["fire_schedule", "fenced save_schedule"])
def test_a_leader_taken_over_between_its_fence_check_and_its_write_cannot_write(opened, verb):
    """On a replica set the fence is in the write (the lease document, updated in the
    write's transaction), so there is no moment between a check and a write: a leader
    that stalled until a successor took over and fired the tick cannot overwrite the
    schedule (regress its next_fire) nor store the tick again."""
    leader, successor = opened(), opened()
    assert leader.transactions
    now = float(int(time.time())) + 86400.0
    leader.save_schedule(ScheduleRecord("beat", {"every": 60}, {}, now, now), now)
    [read] = leader.schedules()
    lease = leader.acquire_lease(SCHEDULER_LEASE, "leader", now, ttl=30)
    fence = Fence(lease.name, lease.owner, lease.token)
    tick = job("beat@1", eta=now, schedule="beat")

    def take_over() -> None:
        taken = successor.acquire_lease(SCHEDULER_LEASE, "successor", now + 31, ttl=30)
        assert taken is not None
        mine = Fence(taken.name, taken.owner, taken.token)
        assert successor.fire_schedule(read, [tick], now + 60, now + 31, mine) is True
        successor.claim(["default"], "w", now + 31, lease=30)  # the tick runs

    stalled = StallsAfterTheCheck(leader._lease_docs, take_over)
    leader._lease_docs = stalled
    with pytest.raises(LeaseLost):
        if verb == "fire_schedule":
            leader.fire_schedule(read, [tick], now + 60, now + 1, fence)
        else:
            leader.save_schedule(read, now + 1, fence)  # an advance as the old leaders wrote it
    assert stalled.taken_over
    [after] = successor.schedules()
    assert (after.next_fire, after.revision) == (now + 60, read.revision + 1)
    assert successor.get(tick.id, now + 31).state == "running"


class PutFirst:
    """The leader's jobs collection: just before the transaction's first insert, a producer
    puts a job with one of the same ids (committed outside the transaction)."""

    def __init__(self, collection: Any, put: Callable[[], None]) -> None:
        self._collection = collection
        self._put = put
        self.done = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._collection, name)
        if name != "insert_many" or self.done:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.done = True
            self._put()
            return real(*args, **kwargs)

        return call


def test_a_tick_put_by_another_writer_during_the_transaction_is_left_untouched(opened):
    """Ids are looked up before the insert (a duplicate key would abort the transaction);
    one stored after the look-up makes the insert a write conflict, and the transaction
    runs again, finds it, and leaves it as it is."""
    leader, producer = opened(), opened()
    now = float(int(time.time())) + 86400.0
    leader.save_schedule(ScheduleRecord("beat", {"every": 60}, {}, now, now), now)
    [read] = leader.schedules()
    lease = leader.acquire_lease(SCHEDULER_LEASE, "leader", now, ttl=30)
    fence = Fence(lease.name, lease.owner, lease.token)
    theirs = job("beat@1", eta=now, payload='"theirs"')
    racing = PutFirst(leader._jobs, lambda: producer.put([theirs], now))
    leader._jobs = racing
    mine = [job("beat@1", eta=now, schedule="beat"), job("beat@2", eta=now, schedule="beat")]
    assert leader.fire_schedule(read, mine, now + 60, now, fence) is True
    assert racing.done
    assert producer.get("beat@1", now).payload == '"theirs"'
    assert producer.get("beat@2", now).schedule == "beat"
    [after] = producer.schedules()
    assert (after.next_fire, after.revision) == (now + 60, read.revision + 1)


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


def test_a_half_open_connection_fails_a_call_within_the_socket_timeout(mongo_server, opened):
    from skunkqueue.persistence.mongodb import SOCKET_TIMEOUT_MS

    proxy = FreezingProxy(mongo_server.port)
    try:
        url = f"mongodb://127.0.0.1:{proxy.port}/skunkqueue_test?directConnection=true"
        default = opened(url)
        assert default._client.options.pool_options.socket_timeout == SOCKET_TIMEOUT_MS / 1000
        backend = opened(url + "&socketTimeoutMS=400")
        backend.put([job("a")], T0)
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as raised:
            backend.get("a", T0)
        assert time.monotonic() - started < 5.0  # 0.4 s, and a retry's server selection
        assert "MongoDB at" in str(raised.value) and raised.value.__cause__ is not None
    finally:
        proxy.close()


def test_a_cancel_that_meets_a_promotion_between_its_read_and_its_write_still_cancels(opened):
    """MongoDB's cancel reads and then compare-and-sets: a sweep promoting the job in
    between (scheduled -> queued) must not make it answer False, since the job is
    cancellable either way (the other stores decide it in one atomic step)."""
    backend = opened()
    backend.put([job("j", eta=T0 + 10)], T0)
    fence = Fence(
        SCHEDULER_LEASE, "leader", backend.acquire_lease(SCHEDULER_LEASE, "leader", T0, 60).token
    )
    real_find = backend._jobs.find

    def find_then_promote(*args: Any, **kwargs: Any) -> Any:
        found = list(real_find(*args, **kwargs))
        backend._jobs.find = real_find  # once
        assert backend.sweep(T0 + 11, fence).promoted == 1
        return found

    backend._jobs.find = find_then_promote
    assert backend.cancel(["j"], T0 + 11, "not wanted") == [True]
    stored = backend.get("j", T0 + 11)
    assert (stored.state, stored.error) == ("cancelled", {"reason": "not wanted"})
