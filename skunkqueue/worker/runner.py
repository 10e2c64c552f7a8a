"""One worker: claim jobs from its routes, run them, report outcomes, keep leases alive.

Claims and outcomes go to the backend in batches sized to how long jobs take, so fast
jobs cost a fraction of a round trip each. Every claimed job reaches an outcome, whatever
fails: a job's exception, however odd, becomes its error; a failed write keeps outcomes
pending until the store takes them; a stop hands back what was not started. The one
exception is a job the store says the worker no longer holds (cancelled while running,
or taken by another worker after its lease lapsed): it gets no outcome from this worker.

A heartbeat thread with its own connection renews the leases of everything the worker
holds, advertises the worker as alive, and watches the running job: once it runs long,
the rest of the batch is handed back for other workers and finished outcomes are
written, so no job waits behind another. It also enforces hard timeouts: a job that
ignores its ``JobTimeout`` is recorded as timed out and the process exits so its
supervisor starts a fresh one. A job the worker no longer holds is stopped the same
way, and not recorded (stopping.py). While its leases are not known to be renewed, the
worker starts no job and claims none (leases.py).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from .. import serialization
from ..config import QueueConfig
from ..errors import JobTimeout
from ..events import Event
from ..model import JobRecord, JobState, Outcome
from ..persistence import open_backend
from ..persistence.base import WORKER_LEASE_PREFIX
from ..registry import lookup_event
from .execute import JobCall, describe_error, in_main_thread
from .leases import LeaseWatch, heartbeat_call_timeout
from .stopping import RunStopper, why_not_held

log = logging.getLogger("skunkqueue.worker")

IDLE_WAIT = 0.1  # seconds an idle worker waits before claiming again (data changes wake it sooner)
FLUSH_AFTER = 0.05  # seconds an outcome may wait to be written with others
MAX_BATCH = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024  # payload bytes one claim may take (one job always fits)
TARGET_BATCH_SECONDS = 0.02  # a claimed batch should take about this long to run
# Once the running job has run this long, the rest of its batch goes back to the route:
# a claimed job never waits much longer than this while another worker could run it.
HAND_BACK_AFTER = 0.05
WATCH_EVERY = 0.025  # seconds between the heartbeat thread's looks at the running job
HARD_TIMEOUT_GRACE = 2.0  # seconds a job may ignore JobTimeout before its process is killed
EXIT_HARD_TIMEOUT = 75
EXIT_NOT_HELD = 76  # a job the worker no longer held ignored being stopped
BACKOFF_MAX = 5.0  # seconds, the longest pause after a backend error
# After this many failed turns in a row (each turn writes pending outcomes first), they
# are written one at a time, so one the store refuses for good (too large, say) cannot
# hold back the others forever.
ISOLATE_AFTER = 3
MODULE_IMPORT_TIMEOUT = 30.0  # seconds to wait for a job's module to register its event


class RunningSlot(Protocol):
    """Where a worker says which job it is running, for its supervisor to read should the
    worker die: a ``value`` of bytes, empty between jobs (a shared-memory char array)."""

    value: bytes


def new_worker_id(slot: int | str = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{slot}:{uuid.uuid4().hex[:6]}"


def _publish(slot: RunningSlot | None, job_id: str) -> None:
    if slot is None:
        return
    try:
        slot.value = job_id.encode()
    except ValueError:  # an id longer than the slot: the supervisor cannot tell which job ran
        slot.value = b""


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
        running_slot: RunningSlot | None = None,
        imports: Sequence[str] = (),
    ) -> None:
        self.config = config
        #: The modules this worker's process was told to import (--import, imports=).
        #: Without any, it may import a top-level script of its working directory that
        #: an unknown event names (the seed's `python demo.py` + `skunq work`).
        self.imports = tuple(imports)
        self.routes = list(dict.fromkeys(routes))
        self.id = worker_id or new_worker_id()
        self.parent_pid = parent_pid
        self.running_slot = running_slot
        # Broadcast copies arrive on a route private to this worker.
        self.claim_routes = self.routes + [f"{route}@{self.id}" for route in self.routes]
        self.backend = open_backend(config.url, config.name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: dict[str, JobRecord] = {}  # claimed, no outcome recorded yet
        self._unstarted: deque[JobRecord] = deque()  # claimed, not started
        self._pending: list[Outcome] = []  # recorded, not yet written
        self._first_pending = 0.0
        self._current: tuple[JobRecord, Event | None, float] | None = None
        self._avg_seconds = 0.001
        self._imported: set[str] = set()
        self._in_main_thread = False
        self._call = JobCall(in_main_thread=False)
        self._failures_in_a_row = 0
        # Whether the leases are known good: no job starts, and no claim is made, unless so.
        self._leases = LeaseWatch(config.lease, self.id)
        #: Stops a job the worker no longer holds; only a main-thread worker has one.
        self._stopper: RunStopper | None = None

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the job running now, hand back the rest of the batch, then return."""
        self._stop.set()

    def interrupt(self) -> None:
        """For a SIGINT handler in the worker's main thread: stop, and interrupt the
        running job's own code (it is handed back, not counted). Between jobs this only
        stops, so no outcome is lost half-recorded."""
        # Event.set takes a lock the interrupted thread may hold: set it from a thread.
        threading.Thread(target=self._stop.set, name="stop", daemon=True).start()
        if self._call.in_job:
            raise KeyboardInterrupt

    def run(self) -> None:
        self._in_main_thread = in_main_thread()
        self._call = JobCall(self._in_main_thread)
        if self._in_main_thread:
            self._stopper = RunStopper(self._call, self._running_job)
            self._stopper.install()
        heartbeat = threading.Thread(
            target=self._heartbeat, name=f"heartbeat-{self.id}", daemon=True
        )
        try:
            self._advertise(self.backend, self.backend.now())
        except Exception:
            log.warning("worker %s: advertising failed; the heartbeat retries", self.id)
        heartbeat.start()
        log.info("worker %s serving %s on queue %s", self.id, self.routes, self.config.name)
        try:
            self._serve()
        except KeyboardInterrupt:
            log.warning("worker %s interrupted: handing back %d jobs", self.id, len(self._held))
        finally:
            self._stop.set()
            self._shut_down(heartbeat)

    def _shut_down(self, heartbeat: threading.Thread) -> None:
        with self._lock:
            rest = list(self._held.values())
            self._unstarted.clear()
        self._hand_back(rest)
        try:
            self._flush()
            self.backend.release_lease(WORKER_LEASE_PREFIX + self.id, self.id)
        except Exception:
            log.exception(
                "worker %s could not store %d outcomes; its supervisor hands the jobs back, "
                "or their leases lapse",
                self.id,
                len(self._pending),
            )
        heartbeat.join(timeout=5)
        self._call.close()
        self.backend.close()
        log.info("worker %s stopped", self.id)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_batch()
                self._failures_in_a_row = 0
            except Exception:
                # The store went away or refused a write; outcomes stay pending and leases
                # are renewed by the heartbeat, so backing off and retrying loses nothing.
                self._failures_in_a_row += 1
                delay = min(BACKOFF_MAX, 0.05 * 2**self._failures_in_a_row)
                log.exception("worker %s: backend error; retrying in %.2f s", self.id, delay)
                if self._failures_in_a_row >= ISOLATE_AFTER:
                    self._isolate_refused_outcomes()
                self._stop.wait(delay)

    def _serve_batch(self) -> None:
        self._flush()  # outcomes a failed write left behind go first
        if not self._leases.may_claim():
            self._leases.wait_for_renewal(IDLE_WAIT)
            return
        claim_began = time.monotonic()
        jobs = self.backend.claim(
            self.claim_routes,
            self.id,
            self.backend.now(),
            self.config.lease,
            self._batch_size(),
            max_bytes=MAX_BATCH_BYTES,
        )
        if not jobs:
            self.backend.wait(IDLE_WAIT, self.claim_routes)
            return
        with self._lock:
            self._held.update((job.id, job) for job in jobs)
            self._unstarted.extend(jobs)
            self._leases.claimed(claim_began)
        try:
            # Leases not known good: the rest of the batch goes back (below), or lapses.
            while not self._stop.is_set() and self._leases.may_start():
                job = self._next_job()
                if job is None:
                    break
                self._record(self._execute(job), ends_current=True)
                if self._pending and time.monotonic() - self._first_pending > FLUSH_AFTER:
                    self._flush_quietly()
        finally:
            # Stopped, interrupted or failed mid-batch: what was not started goes back.
            with self._lock:
                rest = list(self._unstarted)
                self._unstarted.clear()
            self._hand_back(rest)
        self._flush()

    def _next_job(self) -> JobRecord | None:
        with self._lock:
            if not self._unstarted:
                return None
            job = self._unstarted.popleft()
            self._current = (job, None, time.monotonic())
            return job

    def _batch_size(self) -> int:
        return max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(self._avg_seconds, 1e-6))))

    # -- outcomes -------------------------------------------------------------------

    def _record(self, outcome: Outcome, *, ends_current: bool = False) -> None:
        with self._lock:
            if ends_current:
                self._current = None
            if self._held.pop(outcome.job_id, None) is None:
                return  # no longer ours (_let_go): the store would refuse the outcome
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append(outcome)

    def _hand_back(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            self._record(Outcome(job.id, JobState.QUEUED))

    def _flush(self, backend: Any = None) -> None:
        with self._lock:
            outcomes, self._pending = self._pending, []
        if not outcomes:
            return
        try:
            answers = (backend or self.backend).finish(
                outcomes, self.id, (backend or self.backend).now()
            )
        except BaseException:
            # Whatever interrupted the write (a store error, a signal), the outcomes stay
            # pending: dropping them would leave their jobs running until their leases lapse.
            with self._lock:
                self._pending[:0] = outcomes
            raise
        self._report_lost(outcomes, answers)

    def _flush_quietly(self, backend: Any = None) -> None:
        """A write between jobs; a failure leaves the outcomes pending for the next one."""
        try:
            self._flush(backend)
        except Exception:
            log.warning("worker %s: writing outcomes failed; will retry", self.id, exc_info=True)

    def _report_lost(self, outcomes: Sequence[Outcome], answers: Sequence[bool]) -> None:
        for outcome, took in zip(outcomes, answers, strict=True):
            if not took:
                log.warning(
                    "job %s: lease lost before its %s outcome was stored; another worker may run it",
                    outcome.job_id,
                    outcome.state,
                )

    def _isolate_refused_outcomes(self) -> None:
        """Write pending outcomes one by one; one the store refuses while it accepts a
        plain error for the same job is replaced by that error (its job must not stay
        running forever). Stops at the first sign the store itself is down."""
        with self._lock:
            outcomes, self._pending = self._pending, []
        for index, outcome in enumerate(outcomes):
            try:
                self._report_lost(
                    [outcome], self.backend.finish([outcome], self.id, self.backend.now())
                )
                continue
            except BaseException as refused:
                substitute = Outcome(
                    outcome.job_id,
                    JobState.ERROR,
                    error={
                        **describe_error(refused),
                        "reason": f"the store refused the job's {outcome.state} outcome",
                    },
                )
                try:
                    self.backend.finish([substitute], self.id, self.backend.now())
                except BaseException:
                    with self._lock:
                        self._pending[:0] = outcomes[index:]
                    return
                log.error(
                    "job %s: the store refused its %s outcome; stored as error instead",
                    outcome.job_id,
                    outcome.state,
                )

    # -- running one job ------------------------------------------------------------

    def _execute(self, job: JobRecord) -> Outcome:
        """Run one job and say how it ended. Never raises but for an interrupting stop:
        whatever goes wrong in here, ours or the job's, becomes the job's outcome."""
        _publish(self.running_slot, job.id)
        try:
            return self._run(job)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. a retry policy that cannot be applied
            log.error("job %s %s: the worker failed while running it", job.id, job.event)
            return Outcome(
                job.id,
                JobState.ERROR,
                error={**describe_error(exc), "reason": "worker error"},
            )
        finally:
            if self.running_slot is not None:
                self.running_slot.value = b""

    def _run(self, job: JobRecord) -> Outcome:
        event = self._resolve(job)
        if event is None:
            message = self._unknown_event(job)
            log.warning("job %s fails: %s", job.id, message)
            return Outcome(
                job.id,
                JobState.ERROR,
                error={
                    "type": "UnknownEvent",  # the name operators search for; no exception is raised
                    "message": message,
                    "reason": "unknown event",
                },
            )
        if job.serializer != event.serializer:
            return Outcome(
                job.id,
                JobState.ERROR,
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
                job.id, JobState.ERROR, error={**describe_error(exc), "reason": "bad payload"}
            )
        log.info("job %s %s started (delivery %d)", job.id, job.event, job.deliveries)
        started_at = self.backend.latest()  # never recorded before it happened
        started = time.perf_counter()
        with self._lock:
            self._current = (job, event, time.monotonic())
        try:
            result = self._call(event.fn, args, kwargs, event.timeout)
            outcome = Outcome(
                job.id,
                JobState.COMPLETE,
                result=serialization.encode(event.serializer, result, f"result of {job.event}"),
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a job's SystemExit is its failure, not the worker's
            outcome = self._failure(job, event, exc)
        seconds = time.perf_counter() - started
        outcome.started_at = started_at
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds
        log.info("job %s %s %s in %.4fs", job.id, job.event, outcome.state, seconds)
        return outcome

    def _failure(self, job: JobRecord, event: Event, exc: BaseException) -> Outcome:
        attempt = job.attempts + 1
        error = describe_error(exc)
        if event.retry is not None and event.retry.retries(exc, attempt):
            delay = event.retry.delay_after(attempt)
            error["attempt"] = attempt
            log.info("job %s %s retrying in %.3f s", job.id, job.event, delay)
            return Outcome(
                job.id, JobState.RETRYING, error=error, eta=self.backend.latest() + delay
            )
        if event.retry is not None and isinstance(exc, event.retry.on):
            error["reason"] = f"retries exhausted after {attempt} attempts"
        return Outcome(job.id, JobState.ERROR, error=error)

    def _resolve(self, job: JobRecord) -> Event | None:
        """The registered event. Only a worker told to import nothing may import more,
        and then only a top-level ``.py`` file of its working directory that the event's
        name starts with: a record can never make the worker import anything else (a
        package, a file inside a folder, a module on the path)."""
        event = lookup_event(self.config.name, job.event)
        if event is not None or self.imports:
            return event
        module = job.event.split(".", 1)[0]
        if "." not in job.event or module in self._imported or not _is_local_script(module):
            return None
        self._imported.add(module)
        return self._import_for(module, job.event)

    def _unknown_event(self, job: JobRecord) -> str:
        module = job.event.rpartition(".")[0] or job.event
        told = ", ".join(self.imports) if self.imports else "nothing"
        return (
            f"unknown event {job.event!r}: not registered on queue {self.config.name!r} by "
            f"the modules this worker imported ({told}; working directory {os.getcwd()}). "
            f"Start the worker with --import for the module that defines it ({module}?)"
        )

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
        info = {
            "routes": self.routes,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "clock_offset": round(backend.clock_offset(), 6),
        }
        backend.acquire_lease(
            WORKER_LEASE_PREFIX + self.id, self.id, now, self.config.heartbeat * 3, info
        )

    def _heartbeat(self) -> None:
        backend: Any = None
        every = min(self.config.lease / 3, self.config.heartbeat)
        next_beat = next_open = time.monotonic()
        try:
            while not self._stop.wait(WATCH_EVERY):
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.error("worker %s: supervisor died; exiting", self.id)
                    os._exit(1)
                if backend is None and time.monotonic() >= next_open:
                    # A store that is down when the worker starts (or restarts) must not
                    # end this thread: without it leases lapse and jobs run twice.
                    try:
                        # Each of its calls gives up well inside a lease: one stuck on a
                        # frozen store must not outlast the leases it is renewing.
                        backend = open_backend(
                            self.config.url,
                            self.config.name,
                            call_timeout=heartbeat_call_timeout(self.config.lease),
                        )
                    except Exception:
                        log.warning(
                            "worker %s: opening the heartbeat's connection failed; retrying",
                            self.id,
                        )
                        next_open = time.monotonic() + 0.5
                # The main thread is inside the job whenever a hard timeout applies, so its
                # connection is free then.
                self._enforce_hard_timeout(backend or self.backend)
                self._enforce_stop(backend or self.backend)
                if backend is None:
                    continue
                self._unblock(backend)
                if time.monotonic() >= next_beat:
                    try:
                        self._beat(backend)
                        next_beat = time.monotonic() + every
                    except Exception:
                        # Keep trying: a lease that lapses gets the job run twice.
                        log.exception("worker %s: renewing leases failed; retrying", self.id)
                        next_beat = time.monotonic() + min(every, 0.5)
        finally:
            if backend is not None:
                backend.close()

    def _unblock(self, backend: Any) -> None:
        """While a job runs long, nothing else waits on it: the rest of its batch goes back
        to the route for other workers, and finished outcomes are written."""
        with self._lock:
            current = self._current
            if current is None or time.monotonic() - current[2] < HAND_BACK_AFTER:
                return
            rest = list(self._unstarted)
            self._unstarted.clear()
        if rest:
            log.info(
                "worker %s: job %s runs long; handing back %d jobs",
                self.id,
                current[0].id,
                len(rest),
            )
            self._hand_back(rest)
        if self._pending:
            self._flush_quietly(backend)

    def _beat(self, backend: Any) -> None:
        # Renew only what this worker knows it holds (claimed, or finished but not yet
        # written): a claim whose reply was lost to a dropped connection must lapse and be
        # redelivered, not be kept alive forever by a worker that never saw it.
        with self._lock:
            beat = self._leases.beat_began()
            mine = set(self._held) | {o.job_id for o in self._pending}
        now = backend.now()
        held = backend.renew(self.id, now, self.config.lease, sorted(mine)) if mine else set()
        with self._lock:
            # Only what was asked about: jobs claimed since the snapshot were not renewed
            # here, and are not lost.
            lost = (mine & set(self._held)) - held
        if lost:
            self._let_go(lost, backend, now)
        self._advertise(backend, now)
        self._leases.renewed(beat)

    def _running_job(self) -> JobRecord | None:
        # No lock: the stopper's signal handler calls this in the main thread, which may
        # hold the lock; reading one attribute is atomic.
        current = self._current
        return None if current is None else current[0]

    def _let_go(self, lost: set[str], backend: Any, now: float) -> None:
        """Jobs the store says this worker no longer holds (cancelled while running, or
        taken by another worker after their lease lapsed): none of them starts, no outcome
        is written for them, and the one running now is stopped (stopping.py)."""
        with self._lock:
            for job_id in lost:
                self._held.pop(job_id, None)
            dropped = [job.id for job in self._unstarted if job.id in lost]
            self._unstarted = deque(job for job in self._unstarted if job.id not in lost)
            current = self._current
        job = None if current is None else current[0]
        if dropped:
            log.warning("worker %s no longer holds %s: not starting them", self.id, dropped)
        if job is None or job.id not in lost:
            return
        try:
            record = backend.get(job.id, now)
            message = why_not_held(job.id, record, self.id)
        except Exception:  # the record only explains why, in the log and the exception
            record, message = None, f"job {job.id} is no longer held by worker {self.id}"
        # An operator's cancel is no trouble; a lapsed lease is (the referee's pattern).
        cancelled = record is not None and record.state == JobState.CANCELLED
        log.log(
            logging.INFO if cancelled else logging.WARNING,
            "worker %s: %s; %s",
            self.id,
            message if cancelled else f"lost the lease on job {job.id}: {message}",
            "stopping it" if self._stopper else "it runs on in this thread, its outcome unstored",
        )
        if self._stopper is not None:
            self._stopper.stop(job, message)

    def _enforce_stop(self, backend: Any) -> None:
        """A job asked to stop (``_let_go``) that ignored it for the grace of a hard
        timeout: the process exits, as for a hard timeout, and its supervisor starts a
        fresh one. Its outcome is not stored: the job is not this worker's any more."""
        job = self._stopper.overdue(HARD_TIMEOUT_GRACE) if self._stopper else None
        if job is None:
            return
        log.error(
            "job %s %s ignored being stopped; stopping worker process %d",
            job.id,
            job.event,
            os.getpid(),
        )
        self._exit_handing_back(backend, EXIT_NOT_HELD)

    def _enforce_hard_timeout(self, backend: Any) -> None:
        if not self._in_main_thread:
            return  # a thread cannot be killed; only process workers enforce hard timeouts
        with self._lock:
            current = self._current
        if current is None or current[1] is None or not current[1].timeout:
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
        try:
            self._record(self._failure(job, event, exc))
        finally:
            self._exit_handing_back(backend, EXIT_HARD_TIMEOUT)

    def _exit_handing_back(self, backend: Any, code: int) -> None:
        """End the process from the heartbeat thread: the rest of the batch goes back,
        recorded outcomes are written, and the worker's lease is given up first."""
        try:
            with self._lock:
                rest = list(self._held.values())
                self._unstarted.clear()
            self._hand_back(rest)
            self._flush(backend)
            backend.release_lease(WORKER_LEASE_PREFIX + self.id, self.id)
        except BaseException:  # noqa: BLE001 - the process ends either way
            log.exception(
                "worker %s: storing the stopped batch failed; its supervisor hands the jobs back",
                self.id,
            )
        finally:
            os._exit(code)


def _is_local_script(module: str) -> bool:
    """A plain file ``<module>.py`` directly in the working directory."""
    return module.isidentifier() and os.path.isfile(os.path.join(os.getcwd(), module + ".py"))
