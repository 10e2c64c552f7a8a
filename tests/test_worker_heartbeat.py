"""A worker whose heartbeat cannot renew its leases: the heartbeat's calls give up well
inside a lease, and the worker starts no job and claims none until renewals go through
again, then resumes.

Real parts: a real redis-server, a TCP proxy in front of it that freezes (tests/proxies.py:
bytes stop, connections stay open), and real ``Worker`` and ``Scheduler`` objects in
threads of this process (as in tests/test_worker_inprocess.py). Where only the heartbeat
must lose the store, the heartbeat thread's connection goes through the proxy and the
worker's own connection straight to Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.scheduler import service
from skunkqueue.worker import runner

from .drivers import require
from .proxies import FreezingProxy
from .threads import scheduler_thread, worker_thread
from .waiting import wait_until

require("redis")

WAIT = 10.0  # generous deadline for anything a worker or scheduler does
SLACK = 0.5  # seconds a heartbeat's failure may come after its bound on a busy machine
PAUSED = "starts no job and claims none"  # what the worker logs when it stops
RESUMED = "leases renewed again; resuming"


@pytest.fixture(autouse=True)
def prompt_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle workers and schedulers look at their stop flag every 50 ms instead of 0.5-1 s."""
    monkeypatch.setattr(runner, "IDLE_WAIT", 0.05)
    monkeypatch.setattr(service, "MAX_SLEEP", 0.05)


@pytest.fixture
def queue(redis_server, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkunkQueue]:
    monkeypatch.chdir(tmp_path)  # the worker may import a job's module from here: nothing
    q = SkunkQueue(f"hb{uuid.uuid4().hex[:10]}", url=redis_server.url)
    yield q
    q.close()


@pytest.fixture
def proxy(redis_server) -> Iterator[FreezingProxy]:
    with FreezingProxy(redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def heartbeat_via(proxy: FreezingProxy, monkeypatch: pytest.MonkeyPatch) -> FreezingProxy:
    """Heartbeat threads open their connection through ``proxy``; all else goes direct."""
    real_open = runner.open_backend

    def open_backend(url: str, queue: str, **options: Any) -> Any:
        if threading.current_thread().name.startswith("heartbeat-"):
            url = f"redis://127.0.0.1:{proxy.port}/0"
        return real_open(url, queue, **options)

    monkeypatch.setattr(runner, "open_backend", open_backend)
    return proxy


def lease_until(queue: SkunkQueue, job_id: str) -> float:
    record = queue.backend.get(job_id, time.time())
    assert record is not None and record.lease_until is not None, record
    return record.lease_until


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


# -- (a) a heartbeat call is bounded --------------------------------------------------------


def test_a_renewal_stuck_on_a_frozen_store_gives_up_in_time_to_renew_the_lease(
    queue: SkunkQueue, heartbeat_via: FreezingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The store stops answering the heartbeat for a moment: the renewal it swallowed
    never gets a reply. The heartbeat gives up on it within a third of the lease and
    renews on a new connection before the lease runs out; without a bound it would wait
    for Redis's 10 s socket timeout, long after the lease lapsed."""
    caplog.set_level(logging.INFO, logger="skunkqueue.worker")
    lease = 3.0  # calls bounded by 1 s; beats every 0.5 s (heartbeat=0.5)
    started, release = threading.Event(), threading.Event()

    @queue.event(routes=["foo"])
    def hold() -> str:
        started.set()
        release.wait(WAIT)
        return "held"

    with worker_thread(queue, lease=lease, heartbeat=0.5):
        run = hold.fire()
        assert started.wait(WAIT)
        claimed = lease_until(queue, run.id)
        wait_until(lambda: lease_until(queue, run.id) > claimed, what="the heartbeat renewing")
        heartbeat_via.freeze()
        wait_until(lambda: heartbeat_via.swallowed, what="a renewal stuck on the frozen store")
        stuck_at = time.time()
        # The lease as the last renewal before the freeze left it: it ends at `lapses`.
        lapses = lease_until(queue, run.id)
        heartbeat_via.thaw()  # too late for the stuck renewal: its request is gone

        [failed] = wait_until(
            lambda: logged(caplog, "renewing leases failed"), what="the stuck renewal to fail"
        )[:1]
        assert failed.created - stuck_at < lease / 3 + SLACK
        wait_until(
            lambda: lease_until(queue, run.id) > lapses,
            timeout=max(0.0, lapses - time.time()),
            what="a renewal before the lease ran out",
        )
        release.set()
        assert run.wait(timeout=WAIT) == "held"
    assert (run.attempts, run.deliveries) == (1, 1)
    assert not logged(caplog, PAUSED)  # a lease renewed in time never stopped the worker


# -- (b, c) no new work while renewals fail, and back to work after --------------------------


def test_a_worker_whose_renewals_fail_starts_no_job_and_claims_none_until_they_go_through(
    queue: SkunkQueue,
    heartbeat_via: FreezingProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the heartbeat loses the store; the worker's own connection still works, so
    nothing but the stale leases can stop it."""
    caplog.set_level(logging.INFO, logger="skunkqueue.worker")
    # The batch stays with the worker while its first job runs (no early hand-back).
    monkeypatch.setattr(runner, "HAND_BACK_AFTER", 60.0)
    lease = 1.5  # beats every 0.5 s; a job may start within 1 s of the last renewal
    ran: list[int] = []

    @queue.event(routes=["foo"])
    def step(i: int) -> int:
        ran.append(i)
        if i == 0:
            heartbeat_via.freeze()
            time.sleep(lease)  # pause: a job body that outlasts 2/3 of the lease unrenewed
        return i

    handles = step.fire_many([(i,) for i in range(6)])
    with worker_thread(queue, lease=lease):
        # One claim took all six. After job 0 the leases are stale: the rest of the batch
        # goes back to the route unrun, through the worker's own connection.
        wait_until(
            lambda: (
                handles[0].state == "complete" and all(h.state == "queued" for h in handles[1:])
            ),
            what="job 0 done and the rest of its batch handed back unrun",
        )
        assert ran == [0]
        # While renewals keep failing it claims nothing: watch the heartbeat try twice more.
        tries = heartbeat_via.accepted
        wait_until(lambda: heartbeat_via.accepted >= tries + 2, what="two more renewal tries")
        assert ran == [0]
        assert all(h.state == "queued" for h in handles[1:])

        heartbeat_via.thaw()
        assert [h.wait(timeout=WAIT) for h in handles] == list(range(6))
    assert sorted(ran) == list(range(6))
    assert [h.deliveries for h in handles] == [1] * 6  # handed back unrun: not counted
    [paused] = logged(caplog, PAUSED)  # once, however often it looked
    assert paused.levelno == logging.WARNING
    [resumed] = logged(caplog, RESUMED)
    assert resumed.levelno == logging.INFO and resumed.created > paused.created


def test_a_worker_cut_off_from_its_store_mid_batch_leaves_the_rest_to_the_leader(
    queue: SkunkQueue,
    proxy: FreezingProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker A reaches Redis only through the proxy, which freezes while A runs the first
    job of its batch. A cannot hand the rest back, so it leaves it: the leader finds the
    leases lapsed and worker B runs every job, each of the rest exactly once. The job A
    was running when its leases lapsed is run again by B: A could not be stopped, and its
    outcome is refused when the store answers again."""
    caplog.set_level(logging.INFO, logger="skunkqueue.worker")
    monkeypatch.setattr(runner, "HAND_BACK_AFTER", 60.0)
    lease = 1.5
    runs: list[tuple[str, int]] = []
    a_started = threading.Event()

    @queue.event(routes=["foo"])
    def step(i: int) -> int:
        runs.append((threading.current_thread().name, i))
        if i == 0 and not a_started.is_set():
            a_started.set()
            proxy.freeze()
            time.sleep(lease * 0.8)  # pause: a job body that outlasts 2/3 of the lease unrenewed
        return i

    # A's own calls give up after 2 s (the heartbeat's after 0.5 s), so it stops in time.
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2"
    handles = step.fire_many([(i,) for i in range(6)])
    with worker_thread(queue, url=via_proxy, join=3 * WAIT, lease=lease) as a:
        assert a_started.wait(WAIT)
        with scheduler_thread(queue), worker_thread(queue, lease=lease) as b:
            done = [h.wait(timeout=3 * WAIT) for h in handles]
            proxy.thaw()
    assert done == list(range(6))
    by_a = [i for name, i in runs if name == f"worker-{a.id}"]
    by_b = sorted(i for name, i in runs if name == f"worker-{b.id}")
    assert by_a == [0]
    assert by_b == list(range(6))
    assert handles[0].deliveries == 2  # A's delivery was lost with its lease
    assert logged(caplog, PAUSED)
