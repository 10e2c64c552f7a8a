"""A worker and a scheduler running in threads of the test process, stopped and joined
(with a deadline) when the test leaves the block."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from skunkqueue import SkunkQueue
from skunkqueue.scheduler import Scheduler
from skunkqueue.worker.runner import Worker

WAIT = 10.0  # generous deadline for anything a worker or scheduler does


@contextmanager
def worker_thread(
    queue: SkunkQueue, routes: Sequence[str] = ("foo",), *, join: float = WAIT, **options: Any
) -> Iterator[Worker]:
    """A ``Worker`` on ``routes``; ``options`` change the queue's config (``None`` keeps it)."""
    worker = Worker(queue.config.with_options(**options), list(routes))
    thread = threading.Thread(target=worker.run, name=f"worker-{worker.id}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(join)
        assert not thread.is_alive(), "worker did not stop"


@contextmanager
def scheduler_thread(queue: SkunkQueue, leader_ttl: float = 3.0) -> Iterator[Scheduler]:
    scheduler = Scheduler(queue.name, url=queue.config.url, leader_ttl=leader_ttl)
    thread = threading.Thread(target=scheduler.run, name="scheduler", daemon=True)
    thread.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), "scheduler did not stop"
