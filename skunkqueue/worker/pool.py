"""``WorkerPool``: a supervisor that runs one worker process per route entry (the seed's
form) or ``concurrency`` processes serving all routes, and a scheduler candidate beside
them in a thread of its own (leader election makes any number of candidates safe, so the
seed's two files get delays, retries, cron and crash recovery with no third process).

Signals: SIGTERM, SIGHUP and SIGQUIT stop gracefully (running jobs finish, claimed but
unstarted jobs are handed back); SIGINT stops at once and hands back interrupted jobs
too, and children still running ``INTERRUPT_GRACE`` seconds later (or at a second
SIGINT) are killed. A stop is honoured at any moment, restart backoff included.

A child that dies unexpectedly has its claimed jobs handed back at once (see
``handback.py``) and is replaced: at once if it died running a job (the job's deliveries
bound that loop), after a growing pause if it keeps dying on its own.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import RawArray
from typing import Any

from ..config import QueueConfig
from ..persistence import open_backend
from ..scheduler import Scheduler
from .handback import HandBacks
from .runner import RunningSlot, Worker, new_worker_id

log = logging.getLogger("skunkqueue.worker")

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STOP_SIGNALS = (*GRACEFUL_SIGNALS, signal.SIGINT)
RESTART_BACKOFF_MAX = 10.0
QUICK_DEATH = 5.0  # seconds: a child that dies younger than this without a job is crash-looping
INTERRUPT_GRACE = 10.0  # seconds children get to stop after SIGINT before they are killed
HAND_BACK_AT_STOP = 3.0  # seconds a stopping pool waits for a down store to take hand-backs
RUNNING_SLOT_BYTES = 8192  # room for the running job's id (longer ids are not attributed)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the supervisor dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the heartbeat thread notices the new parent pid instead


def _share_memory_with_children() -> None:
    """Keep the supervisor's memory shared with the workers it forks, and its threads'
    allocations small: the whole pool's footprint is what users compare.

    Objects frozen out of the garbage collector's generations are never traversed, so a
    collection in the supervisor or a worker does not copy their pages; and the
    supervisor's few threads share one malloc arena instead of one each.
    """
    gc.freeze()
    _set_malloc_arenas(1)


def _set_malloc_arenas(count: int) -> None:
    """glibc's M_ARENA_MAX (0 = its default); elsewhere nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(-8, count)
    except (OSError, AttributeError):
        pass


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


def _worker_main(
    config: QueueConfig,
    routes: list[str],
    worker_id: str,
    parent_pid: int,
    running: Any,
    imports: tuple[str, ...],
) -> None:
    # Stop signals are blocked from before the fork until the handlers below exist: one
    # that arrives in between waits for them instead of hitting the supervisor's handler.
    _die_with_parent()
    _set_malloc_arenas(0)  # a job's own threads get glibc's usual arenas
    worker = Worker(
        config,
        routes,
        worker_id=worker_id,
        parent_pid=parent_pid,
        running_slot=running,
        imports=imports,
    )

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one interrupt is enough
        worker.interrupt()

    stop_on_signals(GRACEFUL_SIGNALS, worker.stop)
    signal.signal(signal.SIGINT, interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    worker.run()


def _cfg_of(config: QueueConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if k != "name"}


class _ThreadSlotValue:
    """The running-job slot of a worker that is a thread (no shared memory needed)."""

    value: bytes = b""


class _Slot:
    """One supervised worker: what it serves, and its current process or thread."""

    def __init__(self, routes: list[str], index: int, running: RunningSlot) -> None:
        self.routes = routes
        self.index = index
        self.running = running
        self.proc: Any = None
        self.runner: Worker | None = None
        self.worker_id = ""
        self.started = 0.0
        self.failures = 0
        self.restart_at = 0.0
        self.killed = False


class WorkerPool:
    """``with WorkerPool('demo', ['foo', 'foo', 'bar'], **cfg) as pool: pool.listen()``.

    ``with_scheduler=False`` leaves scheduling to separate ``skunq scheduler`` processes
    (or other pools); without any, delayed jobs, retries and cron ticks never run.
    """

    def __init__(
        self,
        name: str,
        routes: Sequence[str],
        *,
        concurrency: int | None = None,
        imports: Sequence[str] = (),
        with_scheduler: bool = True,
        **cfg: Any,
    ) -> None:
        if isinstance(routes, str) or not routes:
            raise ValueError("routes must be a non-empty list, e.g. ['foo', 'foo', 'bar']")
        self.config = QueueConfig.from_kwargs(name, **cfg)
        self.imports = tuple(imports)
        for module in self.imports:
            importlib.import_module(module)
        if concurrency is None:
            groups = [[route] for route in routes]
        else:
            if concurrency < 1:
                raise ValueError("concurrency must be at least 1")
            groups = [list(dict.fromkeys(routes))] * concurrency
        probe = open_backend(self.config.url, name)
        self._use_processes = probe.shared_across_processes
        probe.close()
        self.slots = [_Slot(group, i, self._running_slot_value()) for i, group in enumerate(groups)]
        self.with_scheduler = with_scheduler
        self._scheduler: Scheduler | None = None
        self._scheduler_thread: threading.Thread | None = None
        self._scheduler_restart_at = 0.0
        self._scheduler_failures = 0
        self._hand_backs = HandBacks(self.config)
        self._requested: str | None = None  # set by stop(), possibly from a signal handler
        self._stopping: str | None = None
        self._kill_at: float | None = None
        self._ended_all = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _running_slot_value(self) -> RunningSlot:
        if self._use_processes:
            return RawArray(ctypes.c_char, RUNNING_SLOT_BYTES)  # type: ignore[return-value]
        return _ThreadSlotValue()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._started_anything() and not self._ended_all:
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
        if not self.with_scheduler:
            log.warning(
                "pool on queue %s runs no scheduler: delayed jobs, retries and cron ticks "
                "wait until a `skunq scheduler` (or a pool with one) runs",
                self.config.name,
            )
        _share_memory_with_children()
        for slot in self.slots:
            self._spawn(slot)
        self._keep_scheduler(time.monotonic())

    def stop(self, graceful: bool = True) -> None:
        """Graceful: finish running jobs. Not graceful: interrupt them and hand them back;
        asked twice, kill the workers still running. Safe to call from a signal handler:
        it only records the request and wakes the supervising loop."""
        self._requested = "interrupt" if not graceful else (self._requested or "graceful")
        if not graceful and self._stopping == "interrupt":
            self._requested = "kill"
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full of wake-ups already, or closed after the pool ended

    # -- the supervising loop ---------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            self._apply_stop_request()
            for slot in self.slots:
                if slot.proc is not None and not self._alive(slot):
                    self._ended(slot)
            now = time.monotonic()
            if self._stopping:
                if self._kill_at is not None and now >= self._kill_at:
                    self._kill_all()
                # Every worker ended *and handed back*: one killed after this turn's
                # check above is dead now but not yet ended, and its jobs are owed.
                if all(s.proc is None for s in self.slots) and not self._scheduler_alive():
                    break
            else:
                for slot in self.slots:
                    if slot.proc is None and now >= slot.restart_at:
                        self._spawn(slot)
                self._keep_scheduler(now)
            self._sleep(self._next_wake(now))
        self._hand_backs.close(HAND_BACK_AT_STOP)
        self._ended_all = True
        log.info("worker pool on queue %s stopped", self.config.name)

    def _next_wake(self, now: float) -> float:
        times = [now + 0.5]
        if self._kill_at is not None:
            times.append(self._kill_at)
        if not self._stopping:
            times += [s.restart_at for s in self.slots if s.proc is None]
            if self.with_scheduler and not self._scheduler_alive():
                times.append(self._scheduler_restart_at)
        return max(0.0, min(times) - now)

    def _sleep(self, seconds: float) -> None:
        waitables: list[Any] = [self._wake_r]
        if self._use_processes:
            waitables += [s.proc.sentinel for s in self.slots if self._alive(s)]
        else:
            seconds = min(seconds, 0.05)  # threads have no sentinel to wake us
        multiprocessing.connection.wait(waitables, timeout=seconds)
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _apply_stop_request(self) -> None:
        requested = self._requested
        if requested is None or requested == self._stopping:
            return
        if requested == "kill":
            self._stopping = "interrupt"
            self._kill_all()
            return
        if self._stopping == "interrupt":  # a graceful request after an interrupt changes nothing
            return
        self._stopping = requested
        log.info("worker pool on queue %s stopping (%s)", self.config.name, requested)
        sig = signal.SIGTERM if requested == "graceful" else signal.SIGINT
        if requested == "interrupt":
            self._kill_at = time.monotonic() + INTERRUPT_GRACE
        for slot in self.slots:
            self._signal(slot, sig)
        if self._scheduler is not None:
            self._scheduler.stop()

    # -- workers ----------------------------------------------------------------------

    def _started_anything(self) -> bool:
        return any(s.proc is not None for s in self.slots) or self._scheduler_thread is not None

    def _spawn(self, slot: _Slot) -> None:
        slot.started = time.monotonic()
        slot.worker_id = new_worker_id(slot.index)
        slot.running.value = b""
        slot.killed = False
        if not self._use_processes:
            # A store that lives in this process (memory://) can only be served by threads.
            slot.runner = Worker(
                self.config,
                slot.routes,
                worker_id=slot.worker_id,
                running_slot=slot.running,
                imports=self.imports,
            )
            slot.proc = threading.Thread(
                target=slot.runner.run, name=f"skunq-worker-{slot.index}", daemon=True
            )
            slot.proc.start()
            return
        ctx = multiprocessing.get_context("fork")
        slot.proc = ctx.Process(
            target=_worker_main,
            args=(
                self.config,
                slot.routes,
                slot.worker_id,
                os.getpid(),
                slot.running,
                self.imports,
            ),
            name=f"skunq-worker-{slot.index}",
        )
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            slot.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _alive(self, slot: _Slot) -> bool:
        return slot.proc is not None and slot.proc.is_alive()

    def _signal(self, slot: _Slot, sig: int) -> None:
        if not self._alive(slot):
            return
        if not self._use_processes:
            if slot.runner is not None:
                slot.runner.stop()
            return
        try:
            os.kill(slot.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_all(self) -> None:
        self._kill_at = None
        for slot in self.slots:
            if self._alive(slot) and self._use_processes:
                log.error("worker %s did not stop in time; killing it", slot.worker_id)
                slot.killed = True
                self._signal(slot, signal.SIGKILL)

    def _ended(self, slot: _Slot) -> None:
        """A worker ended: hand back what it held, and plan its replacement."""
        code = getattr(slot.proc, "exitcode", None)
        running = slot.running.value.decode(errors="replace")
        slot.proc = None
        slot.runner = None
        # Killed by this pool's stop: its job was interrupted, not at fault, so not counted.
        started = (running,) if running and not slot.killed else ()
        self._hand_backs.owe(slot.worker_id, started)
        if self._stopping:
            return
        if running:
            log.error(
                "worker %s (slot %d) died with exit code %s while running job %s; replacing it",
                slot.worker_id,
                slot.index,
                code,
                running,
            )
            slot.failures = 0
            slot.restart_at = time.monotonic()  # the job's deliveries bound this loop
            return
        quick = time.monotonic() - slot.started < QUICK_DEATH
        slot.failures = slot.failures + 1 if quick else 0
        delay = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (slot.failures - 1)) if slot.failures else 0.0
        log.error(
            "worker %s (slot %d) died with exit code %s; replacing it in %.1f s",
            slot.worker_id,
            slot.index,
            code,
            delay,
        )
        slot.restart_at = time.monotonic() + delay

    # -- the scheduler candidate --------------------------------------------------------

    def _start_scheduler(self) -> None:
        self._scheduler = Scheduler(self.config.name, **_cfg_of(self.config))
        self._scheduler_thread = threading.Thread(
            target=self._run_scheduler, args=(self._scheduler,), name="skunq-scheduler", daemon=True
        )
        self._scheduler_thread.start()

    def _run_scheduler(self, scheduler: Scheduler) -> None:
        try:
            scheduler.run()
        except BaseException:  # noqa: BLE001 - the supervisor starts a new one
            log.exception("the pool's scheduler failed")

    def _scheduler_alive(self) -> bool:
        return self._scheduler_thread is not None and self._scheduler_thread.is_alive()

    def _keep_scheduler(self, now: float) -> None:
        if not self.with_scheduler or self._scheduler_alive() or now < self._scheduler_restart_at:
            return
        if self._scheduler_thread is not None:
            self._scheduler_failures += 1
            self._scheduler_restart_at = now + min(
                RESTART_BACKOFF_MAX, 0.5 * 2 ** (self._scheduler_failures - 1)
            )
            self._scheduler_thread = None
            return
        try:
            self._start_scheduler()
        except Exception:
            log.exception("starting the pool's scheduler failed; retrying")
            self._scheduler_failures += 1
            self._scheduler_restart_at = now + min(
                RESTART_BACKOFF_MAX, 0.5 * 2 ** (self._scheduler_failures - 1)
            )
