"""One worker: claim jobs from its routes, run them, report outcomes, keep leases alive.

Claims and outcomes go to the backend in batches sized to how long jobs take, so fast
jobs cost a fraction of a round trip each while a slow job never holds others hostage.
A heartbeat thread with its own connection renews the leases of everything the worker
holds, advertises the worker as alive, and enforces hard timeouts: a job that ignores
its ``JobTimeout`` is recorded as timed out and the process exits so its supervisor
starts a fresh one.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .. import serialization
from ..config import QueueConfig
from ..errors import JobTimeout
from ..events import Event
from ..jobs import JobRecord, JobState, Outcome
from ..persistence import open_backend
from ..persistence.base import WORKER_LEASE_PREFIX
from ..queue import lookup_event

log = logging.getLogger("skunkqueue.worker")

IDLE_WAIT = 0.1  # seconds an idle worker waits before claiming again (data changes wake it sooner)
FLUSH_AFTER = 0.05  # seconds an outcome may wait to be written with others
MAX_BATCH = 64
TARGET_BATCH_SECONDS = 0.02  # a claimed batch should take about this long to run
HARD_TIMEOUT_GRACE = 2.0  # seconds a job may ignore JobTimeout before its process is killed
EXIT_HARD_TIMEOUT = 75
BACKOFF_MAX = 5.0  # seconds, the longest pause after a backend error
MODULE_IMPORT_TIMEOUT = 30.0  # seconds to wait for a job's module to register its event


def new_worker_id(slot: int | str = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{slot}:{uuid.uuid4().hex[:6]}"


def describe_error(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }


class Worker:
    """Serves ``routes`` of one queue until ``stop()``; run it in a process's main thread
    to get soft (``JobTimeout``) and hard (process exit) timeouts."""

    def __init__(
        self,
        config: QueueConfig,
        routes: Sequence[str],
        *,
        worker_id: str | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.config = config
        self.routes = list(dict.fromkeys(routes))
        self.id = worker_id or new_worker_id()
        self.parent_pid = parent_pid
        # Broadcast copies arrive on a route private to this worker.
        self.claim_routes = self.routes + [f"{route}@{self.id}" for route in self.routes]
        self.backend = open_backend(config.url, config.name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: dict[str, JobRecord] = {}
        self._pending: list[Outcome] = []
        self._first_pending = 0.0
        self._current: tuple[JobRecord, Event, float] | None = None
        self._avg_seconds = 0.001
        self._imported: set[str] = set()
        self._in_main_thread = False

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the job running now, hand back the rest of the batch, then return."""
        self._stop.set()

    def run(self) -> None:
        self._in_main_thread = threading.current_thread() is threading.main_thread()
        heartbeat = threading.Thread(
            target=self._heartbeat, name=f"heartbeat-{self.id}", daemon=True
        )
        self._advertise(self.backend, time.time())
        heartbeat.start()
        log.info("worker %s serving %s on queue %s", self.id, self.routes, self.config.name)
        try:
            self._serve()
        except KeyboardInterrupt:
            log.warning("worker %s interrupted: handing back %d jobs", self.id, len(self._held))
        finally:
            self._stop.set()
            self._hand_back(list(self._held.values()))
            try:
                self._flush()
                self.backend.release_lease(WORKER_LEASE_PREFIX + self.id, self.id)
            except Exception:
                log.exception(
                    "worker %s could not store %d outcomes; their leases will lapse and the "
                    "jobs be delivered again",
                    self.id,
                    len(self._pending),
                )
            heartbeat.join(timeout=5)
            self.backend.close()
            log.info("worker %s stopped", self.id)

    def _serve(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._serve_batch()
                failures = 0
            except Exception:
                # The store went away or refused a write; outcomes stay pending and leases
                # are renewed by the heartbeat, so backing off and retrying loses nothing.
                failures += 1
                delay = min(BACKOFF_MAX, 0.05 * 2**failures)
                log.exception("worker %s: backend error; retrying in %.2f s", self.id, delay)
                self._stop.wait(delay)

    def _serve_batch(self) -> None:
        self._flush()  # outcomes a failed write left behind go first
        jobs = self.backend.claim(
            self.claim_routes, self.id, time.time(), self.config.lease, self._batch_size()
        )
        if not jobs:
            self.backend.wait(IDLE_WAIT, self.claim_routes)
            return
        with self._lock:
            self._held.update((job.id, job) for job in jobs)
        for job in jobs:
            if self._stop.is_set():
                break
            self._record(self._execute(job))
            if self._pending and time.monotonic() - self._first_pending > FLUSH_AFTER:
                self._flush()
        self._flush()

    def _batch_size(self) -> int:
        return max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(self._avg_seconds, 1e-6))))

    # -- outcomes -------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append(outcome)
            self._held.pop(outcome.job_id, None)

    def _hand_back(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            self._record(Outcome(job.id, JobState.QUEUED.value))

    def _flush(self, backend: Any = None) -> None:
        with self._lock:
            outcomes, self._pending = self._pending, []
        if not outcomes:
            return
        try:
            answers = (backend or self.backend).finish(outcomes, self.id, time.time())
        except Exception:
            with self._lock:
                self._pending[:0] = outcomes
            raise
        for outcome, took in zip(outcomes, answers, strict=True):
            if not took:
                log.warning(
                    "job %s: lease lost before its %s outcome was stored; another worker may run it",
                    outcome.job_id,
                    outcome.state,
                )

    # -- running one job ------------------------------------------------------------

    def _execute(self, job: JobRecord) -> Outcome:
        event = self._resolve(job)
        if event is None:
            return Outcome(
                job.id,
                JobState.ERROR.value,
                error={
                    "type": "UnknownEvent",
                    "message": f"unknown event {job.event!r}: not registered on queue "
                    f"{self.config.name!r} by any module this worker imported",
                    "reason": "unknown event",
                },
            )
        if job.serializer != event.serializer:
            return Outcome(
                job.id,
                JobState.ERROR.value,
                error={
                    "type": "SerializationError",
                    "message": f"payload is {job.serializer!r} but event {job.event!r} accepts {event.serializer!r}",
                    "reason": "serializer mismatch",
                },
            )
        try:
            args, kwargs = serialization.decode_call(event.serializer, job.payload)
        except Exception as exc:
            return Outcome(
                job.id, JobState.ERROR.value, error={**describe_error(exc), "reason": "bad payload"}
            )
        log.info("job %s %s started (delivery %d)", job.id, job.event, job.deliveries)
        started = time.perf_counter()
        with self._lock:
            self._current = (job, event, time.monotonic())
        try:
            with self._soft_timeout(event.timeout):
                result = event.fn(*args, **kwargs)
            outcome = Outcome(
                job.id,
                JobState.COMPLETE.value,
                result=serialization.encode(event.serializer, result, f"result of {job.event}"),
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a job's SystemExit is its failure, not the worker's
            outcome = self._failure(job, event, exc)
        finally:
            with self._lock:
                self._current = None
        seconds = time.perf_counter() - started
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds
        log.info("job %s %s %s in %.4fs", job.id, job.event, outcome.state, seconds)
        return outcome

    def _failure(self, job: JobRecord, event: Event, exc: BaseException) -> Outcome:
        attempt = job.attempts + 1
        error = describe_error(exc)
        if event.retry is not None and event.retry.retries(exc, attempt):
            eta = time.time() + event.retry.delay_after(attempt)
            return Outcome(
                job.id, JobState.RETRYING.value, error={**error, "attempt": attempt}, eta=eta
            )
        if event.retry is not None and isinstance(exc, event.retry.on):
            error["reason"] = f"retries exhausted after {attempt} attempts"
        return Outcome(job.id, JobState.ERROR.value, error=error)

    @contextmanager
    def _soft_timeout(self, seconds: float | None) -> Iterator[None]:
        if not seconds or not self._in_main_thread:
            yield
            return

        def expire(signum: int, frame: FrameType | None) -> None:
            raise JobTimeout(f"job ran past its timeout of {seconds} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _resolve(self, job: JobRecord) -> Event | None:
        """The registered event, importing the job's module only if it is a file in the
        worker's working directory: a record can never make the worker import anything else."""
        event = lookup_event(self.config.name, job.event)
        if event is not None:
            return event
        parts = job.event.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in self._imported or not _is_local_module(module):
                continue
            self._imported.add(module)
            event = self._import_for(module, job.event)
            if event is not None:
                return event
        return None

    def _import_for(self, module: str, event_name: str) -> Event | None:
        """Import ``module`` until it has registered ``event_name``.

        The import runs in its own thread and the worker goes on as soon as the event is
        registered: a script like the seed's demo.py fires jobs and sleeps at top level
        after defining its events, and the worker should not wait for that.
        """
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())

        def load() -> None:
            try:
                importlib.import_module(module)
            except BaseException:
                log.exception("importing %s for event %s failed", module, event_name)

        loader = threading.Thread(target=load, name=f"import-{module}", daemon=True)
        loader.start()
        deadline = time.monotonic() + MODULE_IMPORT_TIMEOUT
        while time.monotonic() < deadline:
            event = lookup_event(self.config.name, event_name)
            if event is not None or not loader.is_alive():
                return event
            loader.join(0.005)
        log.error(
            "importing %s did not register %s within %s s",
            module,
            event_name,
            MODULE_IMPORT_TIMEOUT,
        )
        return None

    # -- the heartbeat thread ---------------------------------------------------------

    def _advertise(self, backend: Any, now: float) -> None:
        info = {"routes": self.routes, "host": socket.gethostname(), "pid": os.getpid()}
        backend.acquire_lease(
            WORKER_LEASE_PREFIX + self.id, self.id, now, self.config.heartbeat * 3, info
        )

    def _heartbeat(self) -> None:
        backend = open_backend(self.config.url, self.config.name)
        every = min(self.config.lease / 3, self.config.heartbeat)
        next_beat = time.monotonic() + every
        try:
            while not self._stop.wait(0.1):
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.error("worker %s: supervisor died; exiting", self.id)
                    os._exit(1)
                self._enforce_hard_timeout(backend)
                if time.monotonic() >= next_beat:
                    try:
                        self._beat(backend)
                        next_beat = time.monotonic() + every
                    except Exception:
                        # Keep trying: a lease that lapses gets the job run twice.
                        log.exception("worker %s: renewing leases failed; retrying", self.id)
                        next_beat = time.monotonic() + min(every, 0.5)
        finally:
            backend.close()

    def _beat(self, backend: Any) -> None:
        # Renew only what this worker knows it holds (claimed, or finished but not yet
        # written): a claim whose reply was lost to a dropped connection must lapse and be
        # redelivered, not be kept alive forever by a worker that never saw it.
        with self._lock:
            mine = set(self._held) | {o.job_id for o in self._pending}
        now = time.time()
        held = backend.renew(self.id, now, self.config.lease, sorted(mine)) if mine else set()
        with self._lock:
            lost = set(self._held) - held
        if lost:
            log.warning("worker %s lost the lease on %s", self.id, sorted(lost))
        self._advertise(backend, now)

    def _enforce_hard_timeout(self, backend: Any) -> None:
        if not self._in_main_thread:
            return  # a thread cannot be killed; only process workers enforce hard timeouts
        with self._lock:
            current = self._current
        if current is None or not current[1].timeout:
            return
        job, event, started = current
        if time.monotonic() - started < event.timeout + HARD_TIMEOUT_GRACE:
            return
        log.error(
            "job %s %s ignored its timeout; stopping worker process %d",
            job.id,
            job.event,
            os.getpid(),
        )
        exc = JobTimeout(f"job ran past its timeout of {event.timeout} s and was killed")
        self._record(self._failure(job, event, exc))
        with self._lock:
            rest = list(self._held.values())
        self._hand_back(rest)
        self._flush(backend)
        backend.release_lease(WORKER_LEASE_PREFIX + self.id, self.id)
        os._exit(EXIT_HARD_TIMEOUT)


def _is_local_module(module: str) -> bool:
    top = os.path.join(os.getcwd(), *module.split("."))
    return os.path.isfile(top + ".py") or os.path.isfile(os.path.join(top, "__init__.py"))
