"""What the Redis backend promises beyond the contract suite: wake-ups without polling,
precise waits, compact storage, exact counts, reloaded scripts, errors that name the
server, and what a put refused part-way (out of memory) leaves. Runs against the session's real redis-server (and cluster, where it matters).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from skunkqueue.errors import BackendUnavailable
from skunkqueue.jobs import JobRecord, Outcome
from skunkqueue.persistence import Backend, open_backend
from skunkqueue.persistence.redis import PUT_CHUNK
from skunkqueue.persistence.rules import MAX_BATCH, lost_deliveries_error
from skunkqueue.serialization import encode_call

from .contract.support import T0, ids, job, lead
from .drivers import require
from .servers import RedisServer, free_port

redis = require("redis")

DEADLINE = 5.0  # seconds a wait may block in these tests; a wake-up must come far sooner
PROMPT = 1.0  # seconds within which a wake-up counts as prompt (generous for a busy CI box)


@pytest.fixture(params=["redis_server", "redis_cluster"], ids=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param).url


@pytest.fixture
def opened(url: str) -> Iterator[Callable[[], Backend]]:
    """Open more backends on one fresh queue; all are closed at the end."""
    queue, backends = f"rt-{uuid.uuid4().hex[:10]}", []

    def open_one() -> Backend:
        backends.append(open_backend(url, queue))
        return backends[-1]

    yield open_one
    for backend in backends:
        backend.close()


def timed_in_thread(fn: Callable[[], object]) -> Callable[[], float]:
    """Start ``fn`` in a thread; the returned function joins it and gives the instant it ended."""
    ended: list[float] = []
    thread = threading.Thread(target=lambda: (fn(), ended.append(time.monotonic())))
    thread.start()

    def join() -> float:
        thread.join(DEADLINE * 2)
        assert ended, "the waiting thread never returned"
        return ended[0]

    return join


# -- wake-ups ---------------------------------------------------------------------


def test_a_full_claim_passes_the_wake_up_on_to_the_next_idle_worker(opened):
    """One token for two jobs: the first worker's claim leaves one, so it wakes the second."""
    producer, workers = opened(), [opened(), opened()]
    claimed: dict[str, list[str]] = {}

    def serve(index: int) -> None:
        workers[index].wait(DEADLINE, ["r"])
        taken = workers[index].claim(["r"], f"w{index}", time.time(), 30, limit=1)
        claimed[f"w{index}"] = [j.id for j in taken]

    joins = [timed_in_thread(lambda i=i: serve(i)) for i in range(2)]
    put_at = time.monotonic()
    producer.put([job("a", route="r"), job("b", route="r")], time.time())
    assert max(join() for join in joins) - put_at < PROMPT
    assert sorted(sum(claimed.values(), [])) == ["a", "b"]


def test_a_wake_up_taken_by_a_worker_that_stopped_waiting_is_passed_on(opened):
    """A worker whose wait timed out is busy; its background pop must not swallow the token."""
    busy, idle, producer = opened(), opened(), opened()
    busy.wait(0.05, ["r"])  # returns; its blocking pop stays queued first on the server
    join = timed_in_thread(lambda: idle.wait(DEADLINE, ["r"]))
    put_at = time.monotonic()
    producer.put([job("a", route="r")], time.time())
    assert join() - put_at < PROMPT


def test_every_scheduler_wakes_when_an_earlier_eta_is_put(opened):
    """Leader and standby alike: a standby must not swallow the leader's wake-up."""
    schedulers, producer = [opened(), opened()], opened()
    for scheduler in schedulers:  # the first wait returns once subscribed
        started = time.monotonic()
        scheduler.wait(DEADLINE)
        assert time.monotonic() - started < DEADLINE
    joins = [timed_in_thread(lambda s=s: s.wait(DEADLINE)) for s in schedulers]
    put_at = time.monotonic()
    producer.put([job("soon", eta=time.time() + 60)], time.time())
    assert [join() - put_at < PROMPT for join in joins] == [True, True]


def test_release_of_the_scheduler_lease_wakes_a_standby(opened):
    leader, standby = opened(), opened()
    fence = lead(leader, time.time(), owner="leader")
    standby.wait(DEADLINE)  # subscribe
    join = timed_in_thread(lambda: standby.wait(DEADLINE))
    released_at = time.monotonic()
    assert leader.release_lease(fence.name, "leader")
    assert join() - released_at < PROMPT


@pytest.mark.parametrize("routes", [None, ["r"]], ids=["scheduler", "worker"])
def test_wait_does_not_overrun_its_timeout(opened, routes):
    """Redis times out blocking commands only every ~100 ms; wait() must do far better."""
    backend = opened()
    if routes is None:
        backend.wait(DEADLINE)  # a scheduler's first wait returns once subscribed
    overruns, control = [], []
    plain = threading.Event()
    for _ in range(10):
        # The control: how late this machine wakes a plain timed wait right now. Redis's own
        # ~100 ms timeout granularity would show far beyond it; a loaded machine does not.
        started = time.monotonic()
        plain.wait(0.03)
        control.append(time.monotonic() - started - 0.03)
        started = time.monotonic()
        backend.wait(0.03, routes)
        overruns.append(time.monotonic() - started - 0.03)
    assert max(overruns) < 0.03 + 2 * max(control), (overruns, control)
    assert statistics.median(overruns) < 0.005 + 2 * statistics.median(control), (overruns, control)


# -- storage ----------------------------------------------------------------------


def test_lost_deliveries_error_is_the_shared_record_rule(opened):
    backend = opened()
    backend.put([job("doomed", max_deliveries=2)], T0)
    fence = lead(backend, T0, ttl=1000)
    for n in (1, 2):
        backend.claim(["default"], f"w{n}", T0 + 20 * n, lease=10)
        backend.sweep(T0 + 20 * n + 11, fence)
    assert backend.get("doomed", T0 + 60).error == lost_deliveries_error(2, 2)


def test_counts_stay_exact_and_deleted_records_leave_no_keys(redis_server):
    queue = f"rt-{uuid.uuid4().hex[:10]}"
    backend = open_backend(redis_server.url, queue)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        backend.put(
            [job(f"j{i}", route=f"r{i % 2}", result_ttl=10) for i in range(6)]
            + [job("later", eta=T0 + 5, result_ttl=10)],
            T0,
        )
        backend.cancel(["j0"], T0, "no")
        taken = backend.claim(["r0", "r1"], "w", T0, lease=30, limit=3)
        backend.finish([Outcome(j.id, "complete") for j in taken], "w", T0)
        fence = lead(backend, T0, ttl=1000)
        backend.sweep(T0 + 5, fence)  # "later" becomes queued
        assert backend.stats(T0 + 5).counts == {
            ("cancelled", "r0"): 1,
            ("complete", "r0"): 1,
            ("complete", "r1"): 2,
            ("queued", "r0"): 1,
            ("queued", "r1"): 1,
            ("queued", "default"): 1,
        }
        assert backend.sweep(T0 + 10, fence).expired == 4
        stored = client.hgetall(f"sq:{{{queue}}}:counts")
        assert stored == {"queued|r0": "1", "queued|r1": "1", "queued|default": "1"}
        backend.cancel(["j4", "j5", "later"], T0 + 10, "bye")
        assert backend.sweep(T0 + 20, fence).expired == 3
        assert client.hgetall(f"sq:{{{queue}}}:counts") == {}
        assert list(client.scan_iter(f"sq:{{{queue}}}:j:*")) == []
        for index in ("scheduled", "running", "expiry", "ready:r0", "ready:r1"):
            assert client.exists(f"sq:{{{queue}}}:{index}") == 0, index
    finally:
        backend.close()
        client.close()


def test_a_scheduled_job_takes_at_most_400_bytes(redis_server):
    """MEMORY USAGE summed over every key of the queue, per scheduled job (two int args)."""
    queue, n = f"mem-{uuid.uuid4().hex[:6]}", 2000
    backend = open_backend(redis_server.url, queue)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        now = time.time()
        payload = encode_call("json", (1, 2), None, "tasks.add")
        jobs = [
            JobRecord(
                id=uuid.uuid4().hex,
                event="tasks.add",
                route="default",
                payload=payload,
                eta=now + 3600 + i,
                created_at=now,
            )
            for i in range(n)
        ]
        assert all(backend.put(jobs, now))
        keys = list(client.scan_iter(f"sq:{{{queue}}}:*", count=1000))
        total = sum(client.memory_usage(key, samples=0) for key in keys)
        assert total / n <= 400, f"{total / n:.0f} bytes per scheduled job"
    finally:
        backend.close()
        client.close()


def test_scripts_are_loaded_again_after_script_flush(url):
    backend = open_backend(url, f"rt-{uuid.uuid4().hex[:10]}")
    if url.startswith("redis+cluster://"):
        client = redis.cluster.RedisCluster.from_url(url.replace("redis+cluster", "redis", 1))
    else:
        client = redis.Redis.from_url(url)
    try:
        assert backend.put([job("a")], T0) == [True]
        client.script_flush()
        # Several pipelined chunks, all refused with NOSCRIPT and all sent again, once.
        batch = [job(f"b{i:03}") for i in range(2 * PUT_CHUNK + 1)]
        assert backend.put(batch, T0) == [True] * len(batch)
        claimed = backend.claim(["default"], "w", T0, 30, limit=len(batch) + 5)
        assert [j.id for j in claimed] == ["a"] + [j.id for j in batch]
    finally:
        backend.close()
        client.close()


def test_the_backend_carries_on_after_a_redis_restart(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        backend = open_backend(server.url, "restart")
        assert backend.put([job("before")], T0) == [True]
        server.restart()  # no persistence here: data and loaded scripts are gone
        # The first send meets the dead connection, the second NOSCRIPT; each job once.
        batch = [job(f"after{i:03}") for i in range(2 * PUT_CHUNK + 1)]
        assert backend.put(batch, T0) == [True] * len(batch)
        claimed = backend.claim(["default"], "w", T0, 30, limit=len(batch) + 5)
        assert [j.id for j in claimed] == [j.id for j in batch]
        backend.close()
    finally:
        server.stop()


# -- opening ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_unreachable_server_is_named_without_its_password(scheme):
    port = free_port()  # nothing listens there
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(f"{scheme}://user:s3cret@127.0.0.1:{port}/0", "q")
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_imports_without_redis_installed():
    """The seed's ``default_cfg`` import works without the driver; opening says what to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from skunkqueue.config import seed_url\n"
        "from skunkqueue.persistence.redis import default_cfg\n"
        "print(seed_url(**default_cfg))\n"
        "from skunkqueue.persistence import open_backend\n"
        "try:\n"
        "    open_backend('redis://localhost:6379/0', 'q')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == "redis://localhost:6379/0"
    assert "pip install 'skunkqueue[redis]'" in out[1]


def test_release_keeps_indexes_and_counts_exact(redis_server):
    queue = f"rt-{uuid.uuid4().hex[:10]}"
    backend = open_backend(redis_server.url, queue)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key = f"sq:{{{queue}}}:".__add__
    try:
        backend.put([job("a"), job("b"), job("c", max_deliveries=1), job("d")], T0)
        assert ids(backend.claim(["default"], "dead", T0, 30, limit=3)) == ["a", "b", "c"]
        client.delete(key("wake:default"))  # the put's token: what follows must leave its own
        client.sadd(key("held:dead"), "ghost")  # a stale entry must not stop the walk
        released = backend.release("dead", T0 + 1, started=["b", "c"])
        assert released == {"a": "queued", "b": "queued", "c": "error"}
        assert client.exists(key("held:dead"), key("running")) == 0
        ready = client.zrange(key("ready:default"), 0, -1)
        assert [m.split("|", 1)[1] for m in ready] == ["a", "b", "d"]
        assert client.hgetall(key("counts")) == {"queued|default": "3", "error|default": "1"}
        assert client.zscore(key("expiry"), "c") == T0 + 1 + 86400
        assert client.lrange(key("wake:default"), 0, -1) == ["1"]
        assert client.hmget(key("j:a"), "o", "l", "d") == [None, None, "0"]
    finally:
        backend.close()
        client.close()


# -- interrupted calls ----------------------------------------------------------------


@contextmanager
def interrupts_on_sigalrm(after: float | None = None) -> Iterator[None]:
    """SIGALRM raises KeyboardInterrupt in the main thread, as Python's SIGINT handler does
    on Ctrl-C; ``after`` arms a real-time timer for it. The timer pytest-timeout set
    (also SIGALRM) is put back afterwards with what was left of it."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGALRM in the test")

    previous = signal.signal(signal.SIGALRM, interrupt)
    started = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, after or 0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            left = outer - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, left))


#: How long the server stays paused: the interrupt comes at 0.2 s, the next call is sent
#: at once, and both wait for the pause to end by itself (CLIENT UNPAUSE would wait too).
PAUSE_MS = 1500


@pytest.mark.parametrize("interrupted", ["put", "claim", "get"])
def test_a_call_interrupted_while_waiting_for_its_reply_leaves_no_reply_behind(
    redis_server, interrupted
):
    """put and claim run on the script lane, get on redis-py's pool: a KeyboardInterrupt
    while the reply is awaited must not leave it to be read by the next call. The server
    is still paused when the next call is sent, so its reply cannot be there yet (the
    pool's check for unread data on checkout would not see it)."""
    backend = open_backend(redis_server.url, f"rt-{uuid.uuid4().hex[:10]}")
    admin = redis.Redis.from_url(redis_server.url)
    try:
        # Connections open, scripts loaded: the interrupted call only waits for its reply.
        assert backend.put([job("first", payload='"first"')], T0) == [True]
        assert backend.get("first", T0).payload == '"first"'
        assert backend.claim(["elsewhere"], "w", T0, 30) == []
        calls = {
            # Two jobs: a reply of two answers, which a one-job put would give away.
            "put": lambda: backend.put([job("x1", route="x"), job("x2", route="x")], T0),
            "claim": lambda: backend.claim(["elsewhere"], "w", T0, 30),
            "get": lambda: backend.get("first", T0),
        }
        admin.client_pause(PAUSE_MS, all=True)
        with pytest.raises(KeyboardInterrupt), interrupts_on_sigalrm(after=0.2):
            calls[interrupted]()
        assert backend.put([job("second", payload='"second"')], T0) == [True]
        assert backend.get("second", T0).payload == '"second"'
        assert backend.get("first", T0).payload == '"first"'
        assert ids(backend.claim(["default"], "w", T0, 30, limit=10)) == ["first", "second"]
    finally:
        backend.close()
        admin.close()


def test_an_interrupt_between_two_chunks_of_a_put_discards_the_lane(redis_server):
    """The first chunk is sent, the second is being encoded when the signal comes: the
    first chunk's reply is unread, and the lane's connection must not be used again."""
    backend = open_backend(redis_server.url, f"rt-{uuid.uuid4().hex[:10]}")

    class SignalledWhileEncoded(float):
        """A created_at whose encoding is interrupted, as by a signal arriving right then."""

        def __float__(self) -> float:
            signal.raise_signal(signal.SIGALRM)
            return T0

    try:
        first = [job(f"a{i:03}") for i in range(PUT_CHUNK)]
        late = job("late", created_at=SignalledWhileEncoded(T0 - 1))
        with pytest.raises(KeyboardInterrupt), interrupts_on_sigalrm():
            backend.put([*first, late], T0)
        assert backend.put([job("after")], T0) == [True]
        claimed = backend.claim(["default"], "w", T0, 30, limit=MAX_BATCH)
        assert ids(claimed) == [*ids(first), "after"]  # the first chunk was stored
    finally:
        backend.close()


# -- a put that Redis refuses part-way ----------------------------------------------------

#: Memory Redis may use beyond what it holds when the put starts: room for some of the
#: put's chunks (each job takes some 600 bytes), far from all of them.
ROOM = 1_000_000
OOM_JOBS = 40 * PUT_CHUNK


@pytest.fixture(params=["server", "cluster"])
def full_redis(request, tmp_path) -> Iterator[tuple[Backend, redis.Redis]]:
    """A backend on a fresh queue, and a client of the Redis node that holds the queue,
    on which the test sets ``maxmemory``: a server of this test's own, or the session
    cluster's node (its limit is lifted again afterwards)."""
    queue = f"oom-{uuid.uuid4().hex[:10]}"
    server = None
    if request.param == "server":
        server = RedisServer(tmp_path / "redis").start()
        url = server.url
        node = redis.Redis.from_url(url)
    else:
        url = request.getfixturevalue("redis_cluster").url
        cluster = redis.cluster.RedisCluster.from_url(url.replace("redis+cluster", "redis", 1))
        where = cluster.get_node_from_key(f"sq:{{{queue}}}:")
        cluster.close()
        node = redis.Redis(host=where.host, port=where.port)
    policy = node.config_get("maxmemory-policy")["maxmemory-policy"]
    backend = open_backend(url, queue)
    try:
        yield backend, node
    finally:
        node.config_set("maxmemory", 0)
        node.config_set("maxmemory-policy", policy)
        backend.close()
        node.close()
        if server is not None:
            server.stop()


def drain(backend: Backend, now: float) -> list[str]:
    """Claim every queued job, in leaving order; their ids."""
    taken: list[str] = []
    while batch := backend.claim(["default"], "drain", now, 30, limit=MAX_BATCH):
        taken += ids(batch)
    return taken


def test_a_put_refused_for_memory_keeps_whole_chunks_and_a_second_put_completes_it(
    full_redis, request
):
    """maxmemory with noeviction: Redis refuses a script that would write once it is over
    the limit, before its first write, so a refused chunk writes nothing. The chunks
    before the first refused one are written whole. On a cluster the calls go one by
    one and none after it is sent; on one server they are pipelined and Redis runs the
    later ones too, storing each whole or not at all (with small jobs, the memory Redis
    frees as it reads the pipelined requests can let a later chunk in)."""
    backend, node = full_redis
    pipelined = request.node.callspec.params["full_redis"] == "server"
    assert backend.put([job("first")], T0) == [True]  # scripts loaded, connection open
    node.config_set("maxmemory-policy", "noeviction")
    node.config_set("maxmemory", node.info("memory")["used_memory"] + ROOM)
    jobs = [job(f"j{i:05}", payload=f'"{i:0300}"') for i in range(OOM_JOBS)]
    node.config_resetstat()  # to count the script calls that reach the node

    with pytest.raises(BackendUnavailable, match="Redis at .* cannot take writes") as raised:
        backend.put(jobs, T0)
    assert isinstance(raised.value.__cause__, redis.exceptions.OutOfMemoryError)

    node.config_set("maxmemory", 0)  # the limit lifted: Redis takes writes again
    stored = [backend.get(j.id, T0) for j in jobs]
    chunks = [stored[i : i + PUT_CHUNK] for i in range(0, OOM_JOBS, PUT_CHUNK)]
    whole = [all(r is not None for r in chunk) for chunk in chunks]
    assert all(whole[i] or all(r is None for r in chunk) for i, chunk in enumerate(chunks))
    refused = whole.index(False)  # some chunk was refused ...
    assert refused > 0, "no chunk was stored: the failure did not come part-way"
    stats = node.info("commandstats")["cmdstat_evalsha"]
    # Redis 7 refuses a script that declares it writes (its '#!lua flags=' line) before
    # running it: such a call counts as rejected, not as a call.
    sent = stats["calls"] + stats.get("rejected_calls", 0)
    if pipelined:
        assert sent == len(chunks)  # every chunk reached Redis, and each ran or was refused
    else:
        assert sent == refused + 1  # nothing after the refused chunk was sent ...
        assert not any(whole[refused:]), whole  # ... or stored
    kept = [j for j, r in zip(jobs, stored, strict=True) if r is not None]
    for j, r in zip(jobs, stored, strict=True):  # each stored job is the job put, indexed
        assert r is None or (r.payload, r.state) == (j.payload, "queued")
    assert backend.stats(T0).counts == {("queued", "default"): 1 + len(kept)}
    assert drain(backend, T0) == ["first", *ids(kept)]

    # Putting the same call again: the stored ids answer False and stay as they are
    # (running, after the drain); the others are stored, once each.
    answers = backend.put(jobs, T0)
    assert answers == [r is None for r in stored]
    assert backend.stats(T0).counts == {
        ("running", "default"): 1 + len(kept),
        ("queued", "default"): OOM_JOBS - len(kept),
    }
    assert drain(backend, T0) == [j.id for j, r in zip(jobs, stored, strict=True) if r is None]
