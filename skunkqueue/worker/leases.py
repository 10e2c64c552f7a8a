"""How long a worker's heartbeat may wait on its store.

A worker holds each claimed job under a lease that its heartbeat renews. A renewal that
waits on a frozen store (a half-open connection) for longer than the lease is worth
nothing: the lease lapsed meanwhile, the leader handed the job back, and another worker
may run it. So the heartbeat's connection is opened with a ``call_timeout`` well inside
the lease.
"""

from __future__ import annotations

#: A heartbeat call gives up after this share of the lease (and sooner where the store's
#: own timeout is shorter): a renewal stuck on a frozen store then fails with a retry still
#: possible before the lease lapses (beats come every third of a lease at most).
CALL_SHARE = 1 / 3


def heartbeat_call_timeout(lease: float) -> float:
    """The ``call_timeout`` of a worker's heartbeat connection, for a lease of ``lease`` s."""
    return lease * CALL_SHARE
