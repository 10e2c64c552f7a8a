"""The FoundationDB parts of benchmarks/bench.py: an own simulator server, and the
claim-contention figure (transaction conflicts per 1,000 claims with 8 claimers, before
and after the backend's contention technique).

No FoundationDB cluster and no ``libfdb_c`` are used: everything runs on
``skunkqueue/testing/fdb_sim.py``, the in-memory simulator of FoundationDB's
transactions. Its speed is that of a Python process (over a local socket for
``fdbsim+tcp``), so **its figures say nothing about a cluster's speed**. The conflicts
are the simulator's own optimistic-concurrency checks, FoundationDB's rule (a read
conflict range against the writes committed after the read version). How often claims
overlap in time is the simulator's, though: with 8 threads in one process it is set by
the GIL's switch interval; with 8 processes (the opt-in ``contention-procs`` phase) by
the round trips to the served simulator; on a cluster, by its latencies.

Imported by bench.py (``python benchmarks/bench.py --fdbsim``); ``python bench_fdb.py
claimer ...`` is one claimer process of the ``contention-procs`` phase.
"""

from __future__ import annotations

import json
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from skunkqueue import SkunkQueue
from skunkqueue.jobs import Outcome
from skunkqueue.persistence import fdb as fdb_backend
from skunkqueue.persistence import open_backend
from skunkqueue.testing import fdb_sim

REPO = Path(__file__).resolve().parent.parent
SIMULATOR = "FoundationDB simulator: says nothing about a cluster's speed"
SIM_SCHEMES = ("fdbsim", "fdbsim+tcp")

#: The contention figure: jobs on one route, claimer threads, claim limits, runs per case.
CONTENTION_JOBS = 2000
CONTENTION_CLAIMERS = 8
CONTENTION_LIMITS = (1, 10)
CONTENTION_RUNS = 3
#: The opt-in process variant (phase contention-procs): jobs per run.
CONTENTION_PROCESS_JOBS = 1000
CONTENTION_ROUTE = "bench"
CONFLICT = 1020  # FoundationDB's not_committed: a read conflicted with a later commit


def is_simulator(url: str) -> bool:
    return urlsplit(url).scheme in SIM_SCHEMES


class OwnFdbSim:
    """``python -m skunkqueue.testing.fdb_sim --port 0`` of the bench's own: it prints
    ``fdb_sim listening on 127.0.0.1:PORT``; stopped by PID with SIGTERM (the way
    tests/servers.py FdbSimServer runs one). Its stderr goes to a log in the work dir."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.log = directory / "fdb_sim.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"fdbsim+tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> OwnFdbSim:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skunkqueue.testing.fdb_sim", "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("fdb_sim listening on "):
            self.stop(signal.SIGKILL)
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the FoundationDB simulator did not start ({line!r}):\n{tail}")
        self.port = int(line.strip().rsplit(":", 1)[-1])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def server_info(url: str) -> dict[str, Any]:
    """What the figures ran on: the simulator (in-process or served), the tuple layer's
    binding version, and the simulator's transaction age limit."""
    import fdb

    info: dict[str, Any] = {
        "simulator": is_simulator(url),
        "scheme": urlsplit(url).scheme,
        "foundationdb_binding": getattr(fdb, "__version__", None) or _dist_version(),
        "api_version": fdb_backend.API_VERSION,
        "spread": fdb_backend.SPREAD,
    }
    return info


def _dist_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("foundationdb")
    except Exception:
        return None


def label(results: dict[str, Any]) -> str:
    """The label every speed figure carries when the backend is the simulator, else ''."""
    server = results.get("fdb_server") or {}
    return SIMULATOR if server.get("simulator") else ""


# -- the contention figure -------------------------------------------------------------


class ConflictCounter:
    """Counts FDBError 1020 as the simulator's transactions meet them, per kind of call.

    Every backend commit goes through ``fdb_sim.transactional``, which hands every
    exception (the commit's 1020 among them) to ``tr.on_error`` before retrying, so
    wrapping ``SimTransaction.on_error`` sees each conflict once. The kind ("claim",
    "finish") is a thread-local set by the claimer around each call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.conflicts: dict[str, int] = {}
        self.other_errors: dict[str, int] = {}

    def reset(self) -> None:
        with self.lock:
            self.conflicts = {}
            self.other_errors = {}

    @contextmanager
    def kind(self, name: str) -> Iterator[None]:
        self.local.kind = name
        try:
            yield
        finally:
            self.local.kind = "other"

    def seen(self, err: BaseException | int) -> None:
        code = err if isinstance(err, int) else getattr(err, "code", None)
        name = getattr(self.local, "kind", "other")
        with self.lock:
            if code == CONFLICT:
                self.conflicts[name] = self.conflicts.get(name, 0) + 1
            else:
                key = f"{name}:{code if code is not None else type(err).__name__}"
                self.other_errors[key] = self.other_errors.get(key, 0) + 1

    @contextmanager
    def installed(self) -> Iterator[ConflictCounter]:
        original = fdb_sim.SimTransaction.on_error

        def on_error(tr: fdb_sim.SimTransaction, err: BaseException | int) -> fdb_sim.SimFuture:
            self.seen(err)
            return original(tr, err)

        fdb_sim.SimTransaction.on_error = on_error  # type: ignore[method-assign]
        try:
            yield self
        finally:
            fdb_sim.SimTransaction.on_error = original  # type: ignore[method-assign]


@contextmanager
def spread(value: int) -> Iterator[None]:
    """``skunkqueue.persistence.fdb.SPREAD`` set to ``value`` for the block (claim reads
    the module global at every call)."""
    saved = fdb_backend.SPREAD
    fdb_backend.SPREAD = value
    try:
        yield
    finally:
        fdb_backend.SPREAD = saved


def _fill(url: str, queue_name: str, jobs: int) -> tuple[SkunkQueue, set[str]]:
    """``jobs`` no-op jobs on the contention route of ``queue_name``; their ids."""
    queue = SkunkQueue(queue_name, url=url)

    @queue.event(routes=[CONTENTION_ROUTE], name="bench.noop")
    def noop() -> None:
        return None

    for offset in range(0, jobs, 500):
        noop.fire_many([()] * min(500, jobs - offset))
    fired = {r.id for r in queue.backend.list_jobs(time.time(), state="queued", limit=jobs + 1)}
    if len(fired) != jobs:
        raise RuntimeError(f"contention: fired {jobs} jobs but {len(fired)} are queued")
    return queue, fired


def _claim_until_empty(
    backend: Any, owner: str, limit: int, counter: ConflictCounter, mine: list[str]
) -> int:
    """Claim ``limit`` at a time and finish each claimed job until the route is empty;
    the claimed ids go to ``mine``. Returns the number of claim calls made."""
    calls = 0
    while True:
        with counter.kind("claim"):
            got = backend.claim([CONTENTION_ROUTE], owner, time.time(), 60.0, limit)
        calls += 1
        if not got:
            return calls
        mine += [r.id for r in got]
        outcomes = [Outcome(r.id, "complete", result="null") for r in got]
        with counter.kind("finish"):
            done = backend.finish(outcomes, owner, time.time())
        if not all(done):
            raise RuntimeError(f"{owner}: finish answered {done}")


def _checked(
    queue: SkunkQueue,
    fired: set[str],
    claimed: list[list[str]],
    calls: int,
    conflicts: dict[str, int],
    other: dict[str, int],
    limit: int,
    elapsed: float,
) -> dict[str, Any]:
    """One run's figures, after checking that every job was claimed exactly once (and is
    complete); raises if not."""
    jobs, claimers = len(fired), len(claimed)
    every = [job_id for mine in claimed for job_id in mine]
    twice = len(every) - len(set(every))
    missing = fired - set(every)
    stray = set(every) - fired
    counts = queue.backend.stats(time.time()).counts
    complete = sum(n for (state, _), n in counts.items() if state == "complete")
    queue.close()
    if twice or missing or stray or len(every) != jobs or complete != jobs:
        raise RuntimeError(
            f"contention (limit {limit}): {len(every)} claims of {jobs} jobs, {twice} claimed "
            f"more than once, {len(missing)} never claimed, {len(stray)} unknown ids, "
            f"{complete} complete: every job must be claimed exactly once"
        )
    taking_calls = calls - claimers  # each claimer's last call found the route empty
    claim_conflicts = conflicts.get("claim", 0)
    return {
        "jobs": jobs,
        "claimers": claimers,
        "limit": limit,
        "seconds": round(elapsed, 4),
        "claims_per_s": round(jobs / elapsed),
        "claim_calls": taking_calls,
        "claim_conflicts": claim_conflicts,
        "finish_conflicts": conflicts.get("finish", 0),
        "conflicts_per_1000_claims": round(claim_conflicts * 1000 / jobs, 1),
        "conflicts_per_1000_claim_calls": round(claim_conflicts * 1000 / taking_calls, 1),
        "per_claimer_jobs": sorted(len(m) for m in claimed),
        "other_errors": other,
        "claimed_exactly_once": True,
    }


def thread_run(counter: ConflictCounter, jobs: int, claimers: int, limit: int) -> dict[str, Any]:
    """One run in this process: ``jobs`` no-op jobs on one route of a fresh in-process
    simulator (``fdbsim://contention-<tag>``), then ``claimers`` threads, each with its own
    backend, claim ``limit`` at a time and finish what they claimed until the route is
    empty. Conflicts are counted by ``counter`` (installed by the caller)."""
    tag = uuid.uuid4().hex[:8]
    url = f"fdbsim://contention-{tag}"
    queue, fired = _fill(url, f"contention-{tag}", jobs)
    backends = [open_backend(url, queue.name) for _ in range(claimers)]
    claimed: list[list[str]] = [[] for _ in range(claimers)]
    calls = [0] * claimers
    errors: list[BaseException] = []
    barrier = threading.Barrier(claimers + 1)

    def claimer(i: int) -> None:
        try:
            barrier.wait()
            calls[i] = _claim_until_empty(backends[i], f"claimer-{i}", limit, counter, claimed[i])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,), daemon=True) for i in range(claimers)]
    for t in threads:
        t.start()
    counter.reset()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - started
    if any(t.is_alive() for t in threads):
        raise RuntimeError("contention: a claimer thread did not finish within 300 s")
    if errors:
        raise RuntimeError(f"contention: a claimer failed: {errors[0]!r}") from errors[0]
    conflicts, other = dict(counter.conflicts), dict(counter.other_errors)
    for backend in backends:
        backend.close()
    return _checked(queue, fired, claimed, sum(calls), conflicts, other, limit, elapsed)


def process_run(
    url: str, jobs: int, claimers: int, limit: int, spread_value: int
) -> dict[str, Any]:
    """One run with ``claimers`` processes (``python bench_fdb.py claimer ...``) on the
    served simulator at ``url``: each sets SPREAD, counts its own conflicts, connects when
    told "connect" and says "ready", and starts claiming when the bench writes "go" to
    every one of them."""
    queue, fired = _fill(url, f"contention-{uuid.uuid4().hex[:8]}", jobs)
    argv = [sys.executable, str(Path(__file__).resolve()), "claimer", url, queue.name]
    procs = [
        subprocess.Popen(
            [*argv, str(limit), str(spread_value), f"claimer-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,
        )
        for i in range(claimers)
    ]
    try:
        for proc in procs:  # one connect at a time: see claimer_main
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"connect\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            if not ready or proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("contention: a claimer process did not start")
        started = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            if proc.wait(timeout=300) != 0:
                raise RuntimeError(f"contention: a claimer process exited {proc.returncode}")
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    elapsed = max(r["finished"] for r in reports) - started
    conflicts: dict[str, int] = {}
    other: dict[str, int] = {}
    for r in reports:
        for into, found in ((conflicts, r["conflicts"]), (other, r["other_errors"])):
            for key, n in found.items():
                into[key] = into.get(key, 0) + n
    claimed = [r["ids"] for r in reports]
    calls = sum(r["calls"] for r in reports)
    return _checked(queue, fired, claimed, calls, conflicts, other, limit, elapsed)


def claimer_main(argv: list[str]) -> int:
    """A claimer process of ``process_run``: ``claimer URL QUEUE LIMIT SPREAD OWNER``."""
    url, queue_name, limit, spread_value, owner = argv
    fdb_backend.SPREAD = int(spread_value)
    counter = ConflictCounter()
    with counter.installed():
        # The simulator server listens with multiprocessing's default backlog of 1, so 8
        # connects at once can leave one waiting many seconds for the handshake: the bench
        # lets the claimers connect one after the other.
        if sys.stdin.readline().strip() != "connect":
            return 1
        backend = open_backend(url, queue_name)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        mine: list[str] = []
        calls = _claim_until_empty(backend, owner, int(limit), counter, mine)
        finished = time.time()
        backend.close()
    report = {
        "ids": mine,
        "calls": calls,
        "finished": finished,
        "conflicts": counter.conflicts,
        "other_errors": counter.other_errors,
    }
    print(json.dumps(report), flush=True)
    return 0


def _spread_of(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _cases(
    run_one: Callable[[int, int], dict[str, Any]],
    limits: tuple[int, ...],
    runs: int,
    progress: Callable[[str], None] | None,
    what: str,
) -> list[dict[str, Any]]:
    """Each limit before (SPREAD 1) and after (the backend's SPREAD), ``runs`` times each:
    medians with min-max. ``run_one(limit, spread)`` makes one run."""
    cases = []
    for limit in limits:
        for name, value in (("before", 1), ("after", fdb_backend.SPREAD)):
            if progress:
                progress(f"{what}, limit {limit}, {name} (SPREAD {value})")
            done = [run_one(limit, value) for _ in range(runs)]
            cases.append(
                {
                    "case": name,
                    "spread": value,
                    "limit": limit,
                    **{
                        key: _spread_of([d[key] for d in done])
                        for key in (
                            "conflicts_per_1000_claims",
                            "conflicts_per_1000_claim_calls",
                            "claims_per_s",
                        )
                    },
                    "runs": done,
                }
            )
    return cases


def contention(
    jobs: int = CONTENTION_JOBS,
    claimers: int = CONTENTION_CLAIMERS,
    limits: tuple[int, ...] = CONTENTION_LIMITS,
    runs: int = CONTENTION_RUNS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The contention figure: ``claimers`` threads in this process, each with its own
    backend on an in-process simulator. "before" sets SPREAD to 1: a retried claim then
    reads the head again and takes its first keys in order, as a claim without the
    technique would; "after" keeps the backend's SPREAD."""
    counter = ConflictCounter()
    default = fdb_backend.SPREAD

    def run_one(limit: int, value: int) -> dict[str, Any]:
        with spread(value):
            return thread_run(counter, jobs, claimers, limit)

    with counter.installed():
        cases = _cases(run_one, limits, runs, progress, "claim contention (threads)")
    return {
        "mode": "threads",
        "jobs": jobs,
        "claimers": claimers,
        "runs": runs,
        "default_spread": default,
        "switch_interval_s": sys.getswitchinterval(),
        "cases": cases,
    }


def contention_processes(
    url: str,
    jobs: int = CONTENTION_PROCESS_JOBS,
    claimers: int = CONTENTION_CLAIMERS,
    limits: tuple[int, ...] = CONTENTION_LIMITS,
    runs: int = CONTENTION_RUNS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The same cases with ``claimers`` processes on the served simulator at ``url``
    (fdbsim+tcp): transactions interleave at every round trip instead of at the GIL's
    switch interval."""
    if urlsplit(url).scheme != "fdbsim+tcp":
        raise RuntimeError(f"contention-procs needs an fdbsim+tcp:// URL, not {url!r}")

    def run_one(limit: int, value: int) -> dict[str, Any]:
        return process_run(url, jobs, claimers, limit, value)

    cases = _cases(run_one, limits, runs, progress, "claim contention (processes)")
    return {
        "mode": "processes",
        "jobs": jobs,
        "claimers": claimers,
        "runs": runs,
        "default_spread": fdb_backend.SPREAD,
        "cases": cases,
    }


# -- report ----------------------------------------------------------------------------


def header(results: dict[str, Any]) -> list[str]:
    server = results.get("fdb_server")
    if not server:
        return []
    if server["simulator"]:
        return [
            f"foundationdb: skunkqueue's simulator ({server['scheme']}://), tuple layer from "
            f"the foundationdb binding {server['foundationdb_binding']}, no libfdb_c, no cluster",
            f"              every speed figure below: {SIMULATOR}",
        ]
    return [f"foundationdb: binding {server['foundationdb_binding']}, API {server['api_version']}"]


def _range_text(s: dict[str, float], fmt: str = ",.1f") -> str:
    text = f"{s['median']:{fmt}}"
    if s["min"] != s["max"]:
        text += f" ({s['min']:{fmt}}-{s['max']:{fmt}})"
    return text


def _who(found: dict[str, Any]) -> str:
    kind = "threads, one process" if found["mode"] == "threads" else "processes, fdbsim+tcp"
    return f"{found['claimers']} {kind}"


def rows(found: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Report rows: per limit, before and after, conflicts per 1,000 claims and claims/s."""
    out = []
    for case in found["cases"]:
        what = (
            f"claim contention, {_who(found)}, limit {case['limit']}, "
            f"{found['jobs']:,} jobs, {case['case']} (SPREAD {case['spread']})"
        )
        out.append(
            (
                what,
                f"{_range_text(case['conflicts_per_1000_claims'])} conflicts / 1,000 claims, "
                f"{_range_text(case['claims_per_s'], ',.0f')} claims/s",
                SIMULATOR,
            )
        )
    return out


def details(found: dict[str, Any]) -> list[str]:
    if found["mode"] == "threads":
        how = (
            f"an in-process simulator, {found['claimers']} threads under one GIL "
            f"(switch interval {found['switch_interval_s'] * 1000:g} ms)"
        )
    else:
        how = f"the served simulator, {found['claimers']} claimer processes"
    lines = [
        f"claim contention ({found['mode']}): medians of {found['runs']} runs (min-max); "
        f"a claim = one claimed job; {how}; every job was claimed exactly once in every run",
    ]
    for case in found["cases"]:
        per_call = _range_text(case["conflicts_per_1000_claim_calls"])
        finish = [r["finish_conflicts"] for r in case["runs"]]
        calls = [r["claim_calls"] for r in case["runs"]]
        lines.append(
            f"  limit {case['limit']} {case['case']:<6}: conflicts per 1,000 claim calls "
            f"{per_call}; claim calls {calls}; finish conflicts {finish}"
        )
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["claimer"]:
        sys.exit(claimer_main(sys.argv[2:]))
    sys.exit("bench_fdb.py is imported by bench.py; run python benchmarks/bench.py --fdbsim")
