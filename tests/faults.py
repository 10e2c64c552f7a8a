"""A fault-injecting wrapper around any backend, for driving real workers, pools and
schedulers through failures of the store they talk to.

A ``Fault`` names a verb and what goes wrong with it: an exception raised *before* the
call (the store never saw it) or *after* it (the store did the work, the reply was
lost), on the Nth call, on every call, or at random with a seed, or a delay. ``inject``
makes every backend that the worker, pool and scheduler modules open go through the
wrapper; forked worker processes inherit it (their call counts are their own).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from skunkqueue import persistence
from skunkqueue.persistence import Backend
from skunkqueue.scheduler import service
from skunkqueue.worker import handback, runner

# The modules that open backends for workers, pools and schedulers, by name.
OPENERS = (runner, handback, service)


def injected(message: str = "injected fault") -> BaseException:
    return ConnectionError(message)


@dataclass
class Fault:
    """What goes wrong with one verb.

    ``nth``: fail the Nth call (1-based) of the verb, and the ``times - 1`` calls after it;
    ``None`` with ``probability``: fail each call with that probability (seeded); ``None``
    with neither: every call. ``when`` is ``before`` or ``after`` the real call.
    """

    verb: str
    when: str = "before"
    error: Callable[[], BaseException] = injected
    nth: int | None = None
    times: int = 1
    probability: float | None = None
    seed: int = 0
    delay: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assert self.when in ("before", "after"), self.when
        self._rng = random.Random(self.seed)

    def fires(self, call: int) -> bool:
        if self.nth is not None:
            return self.nth <= call < self.nth + self.times
        if self.probability is not None:
            return self._rng.random() < self.probability
        return True


@dataclass
class FaultPlan:
    """The faults of one test, and what they did (per process)."""

    faults: Sequence[Fault]
    #: Where every process appends "pid verb when call" for each fault it fired, so a test
    #: can see faults fired in forked workers too.
    record_to: Path | None = None
    calls: dict[str, int] = field(default_factory=dict)
    fired: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, verb: str) -> int:
        with self.lock:
            self.calls[verb] = self.calls.get(verb, 0) + 1
            return self.calls[verb]

    def faults_for(self, verb: str, when: str, call: int) -> list[Fault]:
        chosen = [f for f in self.faults if f.verb == verb and f.when == when and f.fires(call)]
        with self.lock:
            self.fired += [(verb, when, call) for _ in chosen]
        if chosen and self.record_to is not None:
            with open(self.record_to, "a") as out:
                out.write(f"{os.getpid()} {verb} {when} {call}\n")
        return chosen


class FaultyBackend:
    """Passes every call through to ``inner``, applying the plan's faults on the way."""

    def __init__(self, inner: Backend, plan: FaultPlan) -> None:
        self._inner = inner
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        plan = self._plan

        def call(*args: Any, **kwargs: Any) -> Any:
            number = plan.count(name)
            for fault in plan.faults_for(name, "before", number):
                if fault.delay:
                    time.sleep(fault.delay)  # pause: the injected delay itself
                else:
                    raise fault.error()
            result = attr(*args, **kwargs)
            for fault in plan.faults_for(name, "after", number):
                if fault.delay:
                    time.sleep(fault.delay)  # pause: the injected delay itself
                else:
                    raise fault.error()
            return result

        return call


@contextmanager
def inject(
    monkeypatch: pytest.MonkeyPatch, *faults: Fault, record_to: Path | None = None
) -> Iterator[FaultPlan]:
    """Every backend the worker, pool and scheduler modules open goes through the plan."""
    plan = FaultPlan(list(faults), record_to)
    real_open = persistence.open_backend

    def open_faulty(url: str, queue: str, **options: Any) -> Any:
        return FaultyBackend(real_open(url, queue, **options), plan)

    for module in OPENERS:
        monkeypatch.setattr(module, "open_backend", open_faulty)
    try:
        yield plan
    finally:
        for module in OPENERS:
            monkeypatch.setattr(module, "open_backend", real_open)
