"""What one backend call read, counted as each store lets a test count it (not timed).

``claim_cost(backend_id, backend)`` is a context manager whose ``count`` is, after the
block: SQLite, the virtual machine instructions its statements ran (a progress handler
called on every one); Redis, the commands the server ran (INFO commandstats, scripts'
own commands included, on every node of a cluster); FoundationDB (the simulator), the
keys its transactions read; MongoDB, the documents its queries returned plus the
commands sent; memory, the records the claim put to a concurrency limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from skunkqueue.persistence import memory
from skunkqueue.testing import fdb_sim


@dataclass
class Cost:
    count: int = 0


@contextmanager
def claim_cost(backend_id: str, backend: Any) -> Iterator[Cost]:
    cost = Cost()
    kind = backend_id.split("+")[0]
    with {
        "sqlite": _sqlite,
        "redis": _redis,
        "fdbsim": _fdb,
        "fdb": _fdb,
        "mongodb": _mongo,
        "memory": _memory,
    }[kind](backend, cost):
        yield cost


@contextmanager
def _sqlite(backend: Any, cost: Cost) -> Iterator[None]:
    def step() -> int:
        cost.count += 1
        return 0

    backend._db.set_progress_handler(step, 1)
    try:
        yield
    finally:
        backend._db.set_progress_handler(None, 1)


def _redis_calls(client: Any) -> int:
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        nodes = client.info("commandstats", target_nodes=RedisCluster.ALL_NODES).values()
    else:
        nodes = [client.info("commandstats")]
    return sum(
        int(stat["calls"])
        for node in nodes
        for name, stat in node.items()
        if name.startswith("cmdstat_") and name != "cmdstat_info"
    )


@contextmanager
def _redis(backend: Any, cost: Cost) -> Iterator[None]:
    before = _redis_calls(backend._client)
    yield
    cost.count = _redis_calls(backend._client) - before


@contextmanager
def _fdb(backend: Any, cost: Cost) -> Iterator[None]:
    get, get_range = fdb_sim.SimTransaction._get, fdb_sim.SimTransaction._get_range

    def counted_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        cost.count += 1
        return get(self, *args, **kwargs)

    def counted_range(self: Any, *args: Any, **kwargs: Any) -> Any:
        found = get_range(self, *args, **kwargs)
        cost.count += 1 + len(found)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fdb_sim.SimTransaction, "_get", counted_get)
        patch.setattr(fdb_sim.SimTransaction, "_get_range", counted_range)
        yield


class _CountingCollection:
    """The jobs collection, counting the commands sent and the documents returned."""

    def __init__(self, inner: Any, cost: Cost) -> None:
        self._inner, self._cost = inner, cost

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._cost.count += 1
            result = method(*args, **kwargs)
            if name == "find":
                return _CountingCursor(result, self._cost)
            return result

        return call


class _CountingCursor:
    def __init__(self, inner: Any, cost: Cost) -> None:
        self._inner, self._cost = inner, cost

    def sort(self, *args: Any, **kwargs: Any) -> _CountingCursor:
        return _CountingCursor(self._inner.sort(*args, **kwargs), self._cost)

    def limit(self, *args: Any, **kwargs: Any) -> _CountingCursor:
        return _CountingCursor(self._inner.limit(*args, **kwargs), self._cost)

    def __iter__(self) -> Iterator[Any]:
        for document in self._inner:
            self._cost.count += 1
            yield document


@contextmanager
def _mongo(backend: Any, cost: Cost) -> Iterator[None]:
    inner = backend._jobs
    backend._jobs = _CountingCollection(inner, cost)
    try:
        yield
    finally:
        backend._jobs = inner


@contextmanager
def _memory(backend: Any, cost: Cost) -> Iterator[None]:
    gate = memory.gate_open

    def counted(*args: Any) -> bool:
        cost.count += 1
        return gate(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "gate_open", counted)
        yield
    # The memory store walks every job on every claim by design (one process, small);
    # what it must not do is put held-back jobs to their limit again. Count the claim too.
    cost.count += 1
