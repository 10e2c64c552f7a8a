"""Backends, chosen by URL scheme and imported only when used.

``open_backend('sqlite:///jobs.db', 'demo')`` returns the queue's ``Backend``. Drivers for
server backends are extras (``pip install skunkqueue[redis]``), so the default path needs
nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..config import redact
from ..errors import ConfigurationError
from .base import Backend, Fence, Lease, ScheduleRecord, Stats, SweepReport, checked_call_timeout

BACKENDS = {
    "memory": ("skunkqueue.persistence.memory", "MemoryBackend"),
    "sqlite": ("skunkqueue.persistence.sqlite", "SQLiteBackend"),
    "redis": ("skunkqueue.persistence.redis", "RedisBackend"),
    "rediss": ("skunkqueue.persistence.redis", "RedisBackend"),
    "unix": ("skunkqueue.persistence.redis", "RedisBackend"),
    "redis+cluster": ("skunkqueue.persistence.redis", "RedisBackend"),
    "rediss+cluster": ("skunkqueue.persistence.redis", "RedisBackend"),
    "mongodb": ("skunkqueue.persistence.mongodb", "MongoBackend"),
    "mongodb+srv": ("skunkqueue.persistence.mongodb", "MongoBackend"),
    "fdb": ("skunkqueue.persistence.fdb", "FoundationDBBackend"),
    # The FoundationDB backend over the simulator, a test double (skunkqueue/testing).
    "fdbsim": ("skunkqueue.testing.fdb_backend", "open_sim_backend"),
    "fdbsim+tcp": ("skunkqueue.testing.fdb_backend", "open_sim_backend"),
}


def open_backend(url: str, queue: str, *, call_timeout: float | None = None) -> Backend:
    """Open the backend that ``url`` names, for queue ``queue``.

    ``call_timeout``: the longest, in seconds, that one call may wait on a store that stops
    answering before it raises ``BackendUnavailable`` (``Backend`` says how each store
    applies it); it only ever lowers the URL's or the store's own timeouts. ``None``: those
    timeouts alone.
    """
    call_timeout = checked_call_timeout(call_timeout)  # before any driver is imported
    if not isinstance(url, str):
        raise ConfigurationError(f"backend URL must be a string, not {url!r}")
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # e.g. an unbalanced '[' in the host
        raise ConfigurationError(f"backend URL {redact(url)} is not a valid URL: {exc}") from None
    if scheme not in BACKENDS:
        raise ConfigurationError(
            f"unsupported backend URL {redact(url)!r}: scheme {scheme!r} is not one of "
            f"{', '.join(sorted(BACKENDS))}"
        )
    module_name, class_name = BACKENDS[scheme]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(url, queue, call_timeout=call_timeout)


__all__ = ["Backend", "Fence", "Lease", "SweepReport", "ScheduleRecord", "Stats", "open_backend"]
