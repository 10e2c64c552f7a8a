"""``WorkerPool``: a supervisor that runs one worker process per route entry (the seed's
form) or ``concurrency`` processes serving all routes, optionally a scheduler beside them.

Signals: SIGTERM, SIGHUP and SIGQUIT stop gracefully (running jobs finish, claimed but
unstarted jobs are handed back); SIGINT stops at once and hands back interrupted jobs
too. A child that dies unexpectedly (a job crashed the interpreter, or ignored its
timeout) has its leases expired at once, so the leader redelivers its jobs, and is
replaced.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..config import QueueConfig
from ..persistence import open_backend
from ..scheduler import Scheduler
from .runner import Worker, new_worker_id

log = logging.getLogger("skunkqueue.worker")

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
RESTART_BACKOFF_MAX = 10.0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the supervisor dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the heartbeat thread notices the new parent pid instead


def stop_on_signals(signals: tuple[int, ...], stop: Any) -> None:
    """Call ``stop`` once when any of ``signals`` arrives, from a thread of its own.

    stop() sets an Event, whose lock the interrupted main thread may hold (inside
    Event.wait, or inside this handler run for an earlier signal: a group-wide SIGTERM
    also arrives again from the supervisor), so taking it in the handler could deadlock.
    """

    def handler(signum: int, frame: Any) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        threading.Thread(target=stop, name="stop", daemon=True).start()

    for sig in signals:
        signal.signal(sig, handler)


def _install_child_signals(stop: Any) -> None:
    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one interrupt is enough
        raise KeyboardInterrupt

    stop_on_signals(GRACEFUL_SIGNALS, stop)
    signal.signal(signal.SIGINT, interrupt)


def _worker_main(config: QueueConfig, routes: list[str], worker_id: str, parent_pid: int) -> None:
    _die_with_parent()
    worker = Worker(config, routes, worker_id=worker_id, parent_pid=parent_pid)
    _install_child_signals(worker.stop)
    worker.run()


def _scheduler_main(config: QueueConfig, parent_pid: int) -> None:
    _die_with_parent()
    scheduler = Scheduler(config.name, **_cfg_of(config))
    _install_child_signals(scheduler.stop)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass


def _cfg_of(config: QueueConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if k != "name"}


class _Slot:
    """One supervised child: what it runs, and its current process or thread."""

    def __init__(self, kind: str, routes: list[str], index: int) -> None:
        self.kind = kind
        self.routes = routes
        self.index = index
        self.proc: Any = None
        self.runner: Worker | Scheduler | None = None
        self.worker_id = ""
        self.started = 0.0
        self.failures = 0


class WorkerPool:
    """``with WorkerPool('demo', ['foo', 'foo', 'bar'], **cfg) as pool: pool.listen()``."""

    def __init__(
        self,
        name: str,
        routes: Sequence[str],
        *,
        concurrency: int | None = None,
        imports: Sequence[str] = (),
        with_scheduler: bool = False,
        **cfg: Any,
    ) -> None:
        if isinstance(routes, str) or not routes:
            raise ValueError("routes must be a non-empty list, e.g. ['foo', 'foo', 'bar']")
        self.config = QueueConfig.from_kwargs(name, **cfg)
        for module in imports:
            importlib.import_module(module)
        if concurrency is None:
            groups = [[route] for route in routes]
        else:
            if concurrency < 1:
                raise ValueError("concurrency must be at least 1")
            groups = [list(dict.fromkeys(routes))] * concurrency
        self.slots = [_Slot("worker", group, i) for i, group in enumerate(groups)]
        if with_scheduler:
            self.slots.append(_Slot("scheduler", [], len(self.slots)))
        probe = open_backend(self.config.url, name)
        self._use_processes = probe.shared_across_processes
        probe.close()
        self._stopping: str | None = None
        self._backend: Any = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if any(self._alive(slot) for slot in self.slots):
            self.stop(graceful=exc_info[0] is None)
            self._supervise()

    # -- control ----------------------------------------------------------------------

    def listen(self) -> None:
        """Start every child and supervise them until a signal stops the pool."""
        if threading.current_thread() is threading.main_thread():
            for sig in GRACEFUL_SIGNALS:
                signal.signal(sig, lambda s, f: self.stop(graceful=True))
            signal.signal(signal.SIGINT, lambda s, f: self.stop(graceful=False))
        self.start()
        self._supervise()

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def stop(self, graceful: bool = True) -> None:
        """Graceful: finish running jobs. Not graceful: interrupt them and hand them back."""
        if self._stopping == "interrupt" or (self._stopping and graceful):
            return
        self._stopping = "graceful" if graceful else "interrupt"
        for slot in self.slots:
            self._signal(slot, signal.SIGTERM if graceful else signal.SIGINT)

    # -- children ---------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.started = time.monotonic()
        slot.worker_id = new_worker_id(slot.index)
        if self._use_processes:
            ctx = multiprocessing.get_context("fork")
            if slot.kind == "worker":
                target, args = _worker_main, (self.config, slot.routes, slot.worker_id, os.getpid())
            else:
                target, args = _scheduler_main, (self.config, os.getpid())
            slot.proc = ctx.Process(
                target=target, args=args, name=f"skunq-{slot.kind}-{slot.index}"
            )
            slot.proc.start()
            return
        # A store that lives in this process (memory://) can only be served by threads.
        if slot.kind == "worker":
            slot.runner = Worker(self.config, slot.routes, worker_id=slot.worker_id)
        else:
            slot.runner = Scheduler(self.config.name, **_cfg_of(self.config))
        slot.proc = threading.Thread(
            target=slot.runner.run, name=f"skunq-{slot.kind}-{slot.index}", daemon=True
        )
        slot.proc.start()

    def _alive(self, slot: _Slot) -> bool:
        return slot.proc is not None and slot.proc.is_alive()

    def _signal(self, slot: _Slot, sig: int) -> None:
        if not self._alive(slot):
            return
        if self._use_processes:
            try:
                os.kill(slot.proc.pid, sig)
            except ProcessLookupError:
                pass
        elif slot.runner is not None:
            slot.runner.stop()

    def _supervise(self) -> None:
        while True:
            alive = [slot for slot in self.slots if self._alive(slot)]
            if self._stopping and not alive:
                break
            if self._use_processes:
                multiprocessing.connection.wait([s.proc.sentinel for s in alive], timeout=0.5)
            else:
                time.sleep(0.05)
            for slot in self.slots:
                if slot.proc is not None and not self._alive(slot) and not self._stopping:
                    self._replace(slot)
        log.info("worker pool on queue %s stopped", self.config.name)

    def _replace(self, slot: _Slot) -> None:
        code = getattr(slot.proc, "exitcode", None)
        log.error(
            "%s %s (slot %d) died with exit code %s; replacing it",
            slot.kind,
            slot.worker_id,
            slot.index,
            code,
        )
        if slot.kind == "worker":
            if self._backend is None:
                self._backend = open_backend(self.config.url, self.config.name)
            released = self._backend.renew(slot.worker_id, time.time(), 0.0)
            if released:
                log.warning("redelivering %d jobs held by %s", len(released), slot.worker_id)
        quick_death = time.monotonic() - slot.started < 5.0
        slot.failures = slot.failures + 1 if quick_death else 0
        if slot.failures:
            time.sleep(min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (slot.failures - 1)))
        self._spawn(slot)
