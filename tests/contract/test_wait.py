"""wait(): an idle worker or scheduler sleeps, and wakes promptly when there may be work.

Waking early without news is allowed by the contract; waking late is not. Each test first
lets the waiter settle (a first wait may report the news of connecting), so a wake-up it
then sees is the one the test caused.
"""

from __future__ import annotations

import threading
import time

import pytest

from ..waiting import timed_wait
from .support import job

DEADLINE = 5.0  # seconds a wait may block here; a wake-up must come far sooner
PROMPT = 1.0  # seconds within which a wake-up counts as prompt (generous for a busy CI box)
QUIET = 0.05  # a wait that lasts this long heard no news

WAITERS = pytest.mark.parametrize("routes", [["r"], None], ids=["worker", "scheduler"])


def settle(backend, routes) -> None:
    """Wait until a short wait lasts its whole timeout: the news of connecting is consumed."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        started = time.monotonic()
        backend.wait(QUIET, routes)
        if time.monotonic() - started >= QUIET * 0.9:
            return
    pytest.fail(f"wait({QUIET}) kept returning early for {DEADLINE} s on a quiet queue")


def test_an_idle_worker_wakes_when_a_job_is_put_on_its_route(store):
    worker, producer = store.open(), store.open()
    settle(worker, ["r"])
    join = timed_wait(worker, DEADLINE, ["r"])
    join.begun()  # the put happens during the wait (one before it would wake it too)
    producer.put([job("a", route="r")], time.time())
    assert join() < PROMPT
    assert [j.id for j in worker.claim(["r"], "w", time.time(), 30)] == ["a"]


def test_a_scheduler_wakes_when_a_job_is_put_for_later(store):
    scheduler, producer = store.open(), store.open()
    settle(scheduler, None)
    join = timed_wait(scheduler, DEADLINE, None)
    join.begun()
    producer.put([job("later", eta=time.time() + 3600)], time.time())
    assert join() < PROMPT


@WAITERS
def test_a_change_made_between_two_waits_wakes_the_second_at_once(store, routes):
    """Between two waits a worker or scheduler is busy; what happens then is not slept through."""
    waiter, producer = store.open(), store.open()
    settle(waiter, routes)
    eta = time.time() + (0 if routes else 3600)
    producer.put([job("meanwhile", route="r", eta=eta)], time.time())
    started = time.monotonic()
    waiter.wait(DEADLINE, routes)
    assert time.monotonic() - started < PROMPT


@WAITERS
def test_a_wait_without_news_lasts_its_timeout_and_no_longer(store, routes):
    backend = store.open()
    settle(backend, routes)
    # The control: how late this machine wakes a plain timed wait right now. A loaded
    # machine makes both late; a backend that oversleeps is late beyond that.
    control = threading.Event()
    started = time.monotonic()
    control.wait(0.3)
    machine_late = time.monotonic() - started - 0.3
    started = time.monotonic()
    backend.wait(0.3, routes)
    took = time.monotonic() - started
    assert took >= 0.3 * 0.97, took
    assert took - 0.3 <= 0.02 + 2 * machine_late, (took, machine_late)
