"""Giving back the jobs of workers that died, from a thread of the supervisor's own.

A worker process that dies (a job called ``os._exit``, crashed the interpreter or was
OOM-killed) leaves the jobs it had claimed ``running``. The supervisor knows at once,
so it hands them back at once instead of waiting for a scheduler to see their leases
lapse: the job that was running counts a delivery (``max_deliveries`` still ends a
poison job), the ones never started go back unrun. The store may be down just then, so
this runs beside the supervisor's loop and retries with backoff; the supervisor never
waits on it for longer than its stop allows, and a scheduler's lease-expiry recovery
remains the backstop.
"""

from __future__ import annotations

import logging
import threading

from ..config import QueueConfig
from ..persistence import Backend, open_backend

log = logging.getLogger("skunkqueue.worker")

RETRY_MAX = 5.0  # seconds, the longest pause between tries while the store is down


class HandBacks:
    """``owe(worker_id, started)`` once per dead worker; ``close(timeout)`` at the end."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._owed: list[tuple[str, tuple[str, ...]]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def owe(self, worker_id: str, started: tuple[str, ...]) -> None:
        with self._cond:
            self._owed.append((worker_id, started))
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hand-back", daemon=True)
                self._thread.start()

    @property
    def outstanding(self) -> int:
        with self._cond:
            return len(self._owed)

    def close(self, timeout: float) -> None:
        """Let the thread finish what is owed, waiting at most ``timeout`` seconds."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        left = self.outstanding
        if left:
            log.warning(
                "the jobs of %d dead workers were not handed back (store unreachable); "
                "their leases lapse and a scheduler recovers them",
                left,
            )

    def _run(self) -> None:
        backend: Backend | None = None
        failures = 0
        try:
            while True:
                with self._cond:
                    while not self._owed and not self._closing:
                        self._cond.wait()
                    if not self._owed:
                        return
                    owed = list(self._owed)
                try:
                    backend = backend or open_backend(self.config.url, self.config.name)
                    for worker_id, started in owed:
                        self._give_back(backend, worker_id, started)
                        with self._cond:
                            self._owed.remove((worker_id, started))
                    failures = 0
                except Exception:
                    failures += 1
                    delay = min(RETRY_MAX, 0.1 * 2**failures)
                    log.warning(
                        "handing back a dead worker's jobs failed; retrying in %.1f s",
                        delay,
                        exc_info=True,
                    )
                    if backend is not None:
                        _close_quietly(backend)
                        backend = None
                    with self._cond:
                        self._cond.wait(delay)
        finally:
            if backend is not None:
                _close_quietly(backend)

    @staticmethod
    def _give_back(backend: Backend, worker_id: str, started: tuple[str, ...]) -> None:
        states = backend.release(worker_id, backend.now(), started)
        if not states:
            return
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        log.warning("handed back %d jobs of dead worker %s: %s", len(states), worker_id, summary)


def _close_quietly(backend: Backend) -> None:
    try:
        backend.close()
    except Exception:
        log.debug("closing a backend failed", exc_info=True)
