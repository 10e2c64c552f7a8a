"""Queue configuration: one place that turns user keyword arguments into settings.

``SkunkQueue``, ``WorkerPool`` and ``Scheduler`` all accept the same ``**cfg`` so the
seed's ``default_cfg`` dictionaries can be passed to any of them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .checks import seconds
from .errors import ConfigurationError
from .serialization import SERIALIZERS

DEFAULT_URL = "sqlite:///skunkqueue.db"
URL_ENV = "SKUNKQUEUE_URL"
QUEUE_TYPES = ("direct", "broadcast")


@dataclass(frozen=True)
class QueueConfig:
    """Settings shared by producers, workers and schedulers of one queue."""

    name: str
    url: str
    queue_type: str = "direct"
    serializer: str = "json"
    result_ttl: float = 86400.0
    lease: float = 30.0
    max_deliveries: int = 3
    leader_ttl: float = 10.0
    heartbeat: float = 5.0

    @classmethod
    def from_kwargs(cls, name: str, **kwargs: Any) -> QueueConfig:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a queue needs a non-empty string name")
        if any(c in name for c in "{}\n\t "):
            raise ConfigurationError(f"queue name {name!r} may not contain braces or whitespace")
        seed_keys = {k: kwargs.pop(k) for k in ("backend", "conn_url", "dbname") if k in kwargs}
        url = kwargs.pop("url", None)
        if url is None:
            url = seed_url(**seed_keys) if seed_keys else os.environ.get(URL_ENV, DEFAULT_URL)
        elif seed_keys:
            raise ConfigurationError("pass either url= or the seed keys backend=/conn_url=/dbname=")
        known = {f.name for f in fields(cls)} - {"name", "url"}
        unknown = set(kwargs) - known
        if unknown:
            raise ConfigurationError(
                f"unknown queue option(s) {sorted(unknown)}; known: {sorted(known | {'url'})}"
            )
        config = cls(name=name, url=url, **kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type must be one of {QUEUE_TYPES}, not {self.queue_type!r}"
            )
        if self.serializer not in SERIALIZERS:
            raise ConfigurationError(
                f"serializer must be one of {SERIALIZERS}, not {self.serializer!r}"
            )
        for name in ("result_ttl", "lease", "leader_ttl", "heartbeat"):
            seconds(name, getattr(self, name))
        if not isinstance(self.max_deliveries, int) or self.max_deliveries < 1:
            raise ConfigurationError(
                f"max_deliveries must be a positive integer, not {self.max_deliveries!r}"
            )

    def with_options(self, **changes: Any) -> QueueConfig:
        config = replace(self, **{k: v for k, v in changes.items() if v is not None})
        config.validate()
        return config


def seed_url(backend: str = "sqlite", conn_url: str | None = None, dbname: Any = None) -> str:
    """Build a backend URL from the seed's ``backend``/``conn_url``/``dbname`` keys."""
    if backend == "sqlite":
        return f"sqlite:///{conn_url or 'skunkqueue.db'}"
    if backend == "memory":
        return f"memory://{conn_url or ''}"
    if backend == "redis":
        return f"redis://{conn_url or 'localhost:6379'}/{dbname if dbname is not None else 0}"
    if backend == "mongodb":
        return f"mongodb://{conn_url or 'localhost:27017'}/{dbname or 'skunkqueue'}"
    if backend in ("fdb", "foundation"):
        return f"fdb://{conn_url or ''}"
    raise ConfigurationError(
        f"unknown backend {backend!r}; expected sqlite, memory, redis, mongodb or fdb"
    )


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    # A password may also sit in the query (redis-py reads ?password=...).
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    if parts.password is None:  # keep the URL as written (urlunsplit drops unix:'s "//")
        return url if query == parts.query else url.replace(parts.query, query, 1)
    # The hosts as written: a cluster URL lists several host:port seeds, which
    # parts.hostname/parts.port cannot parse.
    hosts = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}", query=query))
