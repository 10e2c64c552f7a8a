"""Leader election: one lease in the backend, renewed well inside its TTL.

Many schedulers may run; the one holding the ``scheduler`` lease leads. Its writes carry
the lease's fencing token, so a leader that stalled past its TTL and was replaced has its
writes rejected by the backend (``LeaseLost``) rather than racing the new leader.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from ..errors import LeaseLost
from ..persistence.base import SCHEDULER_LEASE, Backend, Fence

log = logging.getLogger("skunkqueue.scheduler")


def process_identity() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class LeaderElection:
    def __init__(self, backend: Backend, ttl: float, owner: str | None = None) -> None:
        self.backend = backend
        self.ttl = ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fence: Fence | None = None

    @property
    def renew_every(self) -> float:
        """A third of the TTL: two renewals can fail before the lease lapses."""
        return self.ttl / 3

    def campaign(self, now: float) -> Fence | None:
        """Take or renew the lease; returns the fence while leading, else ``None``."""
        lease = self.backend.acquire_lease(
            SCHEDULER_LEASE,
            self.owner,
            now,
            self.ttl,
            {**process_identity(), "clock_offset": round(self.backend.clock_offset(), 6)},
        )
        was_leading = self.fence is not None
        self.fence = Fence(lease.name, lease.owner, lease.token) if lease else None
        if self.fence and not was_leading:
            log.info("scheduler %s leads (token %d)", self.owner, self.fence.token)
        elif was_leading and not self.fence:
            log.warning("scheduler %s lost the lead", self.owner)
        return self.fence

    def deposed(self, error: LeaseLost) -> None:
        log.warning("scheduler %s was deposed: %s", self.owner, error)
        self.fence = None

    def resign(self) -> None:
        if self.fence is not None:
            self.backend.release_lease(SCHEDULER_LEASE, self.owner)
            self.fence = None
