"""The FoundationDB backend over the simulator: what ``fdbsim://`` URLs open. For tests.

* ``fdbsim://NAME``: an in-process ``SimDatabase``, shared by every backend of this
  process that names it, like ``memory://``.
* ``fdbsim+tcp://127.0.0.1:PORT``: the simulator a ``python -m skunkqueue.testing.fdb_sim
  --port PORT`` serves, shared by processes (the end-to-end tests' workers, benchmarks).

The backend is the product's ``FoundationDBBackend``, every verb unchanged; only its
opener is this module's: the database comes from the simulator and transactions run in
the simulator's own retry loop (``fdb_sim.transactional``, unbounded, as the tests and
benchmarks have always run it), not in the bounded loop of a real cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

from ..errors import BackendUnavailable, ConfigurationError
from ..persistence.fdb import FoundationDBBackend, OpenedDatabase
from . import fdb_sim

_sims: dict[str, fdb_sim.SimDatabase] = {}
_sims_lock = threading.Lock()


def open_sim(
    url: str, queue: str, pack: Callable[[tuple], bytes], call_timeout: float | None = None
) -> OpenedDatabase:
    """The simulator that ``url`` names, with the queue's prefix ``('skunkqueue', queue)``.

    ``call_timeout`` is accepted and bounds nothing: the simulator does not model the
    transaction ``timeout`` option (the cluster path's use of it is tested with the
    binding's module replaced, in tests/test_fdb_cluster_path.py)."""
    parts = urlsplit(url)
    if parts.scheme == "fdbsim":
        name = parts.netloc or "default"
        with _sims_lock:
            database: fdb_sim.SimDatabase | fdb_sim.RemoteDatabase = _sims.setdefault(
                name, fdb_sim.SimDatabase()
            )
        shared = False
    elif parts.scheme == "fdbsim+tcp":
        if not parts.hostname or not parts.port:
            raise ConfigurationError(f"{url!r}: an fdbsim+tcp URL needs host:port")
        try:
            database = fdb_sim.connect((parts.hostname, parts.port))
        except OSError as exc:
            raise BackendUnavailable(f"no FoundationDB simulator at {url!r}: {exc}") from exc
        shared = True
    else:
        raise ConfigurationError(f"{url!r}: the simulator opens fdbsim:// and fdbsim+tcp:// URLs")
    run = partial(fdb_sim.transactional, database)
    return OpenedDatabase(pack(("skunkqueue", queue)), run, shared)


def open_sim_backend(
    url: str, queue: str, *, call_timeout: float | None = None
) -> FoundationDBBackend:
    """``FoundationDBBackend`` on the simulator: the factory ``open_backend`` calls for the
    ``fdbsim`` and ``fdbsim+tcp`` schemes."""
    return FoundationDBBackend(url, queue, opener=open_sim, call_timeout=call_timeout)
