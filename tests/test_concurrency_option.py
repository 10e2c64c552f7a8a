"""``@queue.event(concurrency=n)``: carried by every job the event makes, a cron tick's
included, and left out of templates where it is not set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from skunkqueue import SkunkQueue
from skunkqueue.scheduler.ticks import tick_record


@pytest.fixture
def queue(url: str) -> Iterator[SkunkQueue]:
    q = SkunkQueue(f"q{uuid.uuid4().hex[:10]}", url=url)
    yield q
    q.close()


def test_every_fire_path_carries_the_limit(queue: SkunkQueue) -> None:
    @queue.event(routes=["api"], concurrency=2)
    def call_partner(order_id: int) -> int:
        return order_id

    now = queue.backend.now()
    handles = [
        call_partner.fire(1),
        call_partner.send(args=(2,), job_id="given-id"),
        *call_partner.fire_many([(3,), (4,)]),
    ]
    for handle in handles:
        assert queue.backend.get(handle.id, now).concurrency == 2


def test_a_cron_template_carries_the_limit_to_its_ticks(queue: SkunkQueue) -> None:
    @queue.event(routes=["reports"], every=60, concurrency=1)
    def report() -> None:
        return None

    @queue.event(routes=["reports"], every=60)
    def unlimited() -> None:
        return None

    stored = {s.template["event"]: s for s in queue.backend.schedules()}
    limited = stored[report.name]
    assert limited.template["concurrency"] == 1
    assert tick_record(queue.name, limited, limited.next_fire, 0.0).concurrency == 1
    # Unset, it is left out: the templates of schedules stored before stay as they were.
    assert "concurrency" not in stored[unlimited.name].template
    plain = stored[unlimited.name]
    assert tick_record(queue.name, plain, plain.next_fire, 0.0).concurrency is None
