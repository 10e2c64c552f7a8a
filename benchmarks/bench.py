#!/usr/bin/env python3
"""SkunkQueue benchmark: fire rate, drain rate, delayed-job lateness, cron tick lateness.

    python benchmarks/bench.py                                # fresh SQLite file in a temp dir
    python benchmarks/bench.py --url sqlite:////tmp/bench.db  # a backend URL of your choice
    python benchmarks/bench.py --quick                        # tiny N: a smoke run
    python benchmarks/bench.py --json out.json                # also save the raw numbers
    python benchmarks/bench.py --redis                        # an own redis-server, Redis figures
    python benchmarks/bench.py --mongo                        # an own SecantusDB (stand-in), explain()
    python benchmarks/bench.py --fdbsim                       # an own FoundationDB simulator, contention

Everything goes through the public API (``SkunkQueue``, ``Event.fire``/``fire_many``/
``fire_at``, handles, ``queue.backend.stats``) and real ``skunq work`` processes, exactly
as a deployment runs them. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_fdb  # benchmarks/bench_fdb.py, next to this script
import bench_mongo  # benchmarks/bench_mongo.py, next to this script
import bench_redis  # benchmarks/bench_redis.py, next to this script

import skunkqueue
from skunkqueue import SkunkQueue

ROUTE = "bench"
FIRE_MANY_BATCH = 500
POLL = 0.05  # seconds between completion polls of the backend's stats
WORKER_LOG_LEVEL = "WARNING"

# The task module the worker processes import (--import bench_tasks). The producer
# imports it too and registers the same events on the same queue names.
TASKS_MODULE = '''\
"""Events for benchmarks/bench.py: written into the run's work directory."""
import os
import time

from skunkqueue import SkunkQueue


def register(queue_name, url=None, cron=False):
    queue = SkunkQueue(queue_name, url=url) if url else SkunkQueue(queue_name)

    @queue.event(routes=["bench"], name="bench.noop")
    def noop():
        return None

    @queue.event(routes=["bench"], name="bench.stamp")
    def stamp():
        return time.time()

    # The producer stores the cron schedule (cron=True) once the pool is up; workers
    # only need the event registered to run its ticks.
    options = {"cron": "* * * * * */1", "misfire": "all"} if cron else {}

    @queue.event(routes=["bench"], name="bench.tick", **options)
    def tick():
        return time.time()

    return queue, {"noop": noop, "stamp": stamp, "tick": tick}


if os.environ.get("BENCH_QUEUE"):
    register(os.environ["BENCH_QUEUE"])
'''


@dataclass
class Sizes:
    fire_single: int
    fire_many: int
    drain: int
    delayed: int
    delayed_spread: float
    ticks: int
    scheduled: int = 50000  # Redis: jobs for bytes per scheduled job and promotion
    pings: int = 5000  # Redis: round trips timed for the fire() ceiling
    delayed_lead: float = 1.0  # seconds from firing to the first eta: firing takes less
    poll: float = POLL  # seconds between the bench's completion polls (each a stats() call)


FULL = Sizes(
    fire_single=10000, fire_many=20000, drain=50000, delayed=300, delayed_spread=3.0, ticks=10
)
QUICK = Sizes(
    fire_single=200,
    fire_many=1000,
    drain=1000,
    delayed=30,
    delayed_spread=1.0,
    ticks=2,
    scheduled=2000,
    pings=500,
)
# SecantusDB, the MongoDB stand-in, manages tens of claims per second: small N. A stats()
# call there takes about 0.2 s (a collection scan), so the bench polls less often, not to
# take the server's time from the workers; and firing 60 jobs takes more than 1 s.
MONGO = Sizes(
    fire_single=200,
    fire_many=1000,
    drain=500,
    delayed=60,
    delayed_spread=3.0,
    ticks=3,
    delayed_lead=3.0,
    poll=0.5,
)
MONGO_QUICK = Sizes(
    fire_single=50,
    fire_many=500,
    drain=100,
    delayed=15,
    delayed_spread=1.0,
    ticks=2,
    delayed_lead=3.0,
    poll=0.5,
)

# The FoundationDB simulator (fdbsim+tcp): one Python server process that every worker and
# the producer reach over a local socket, a few round trips per transaction; fire() manages
# about 1,000 jobs/s there. Sizes for a whole --fdbsim run of under two minutes.
FDBSIM = Sizes(
    fire_single=1000,
    fire_many=5000,
    drain=3000,
    delayed=100,
    delayed_spread=2.0,
    ticks=3,
    delayed_lead=1.0,
    poll=0.2,
)
FDBSIM_QUICK = Sizes(
    fire_single=100,
    fire_many=500,
    drain=300,
    delayed=20,
    delayed_spread=1.0,
    ticks=2,
    poll=0.2,
)


# -- helpers ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: list[float]) -> dict[str, Any]:
    """p50/p99/max in milliseconds of a list of seconds, and the count below zero."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
        "early": sum(1 for v in values if v < 0),
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": cpus,
        "cpu": model,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "skunkqueue": skunkqueue.__version__,
    }


def absolute_url(url: str) -> str:
    """Worker processes run in the work directory, so a relative SQLite path is made absolute."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path, _, query = url[len(prefix) :].partition("?")
        if path != ":memory:":
            url = prefix + os.path.abspath(path) + (f"?{query}" if query else "")
    return url


def complete_count(queue: SkunkQueue) -> int:
    counts = queue.backend.stats(time.time()).counts
    return sum(n for (state, _), n in counts.items() if state == "complete")


def finished_count(queue: SkunkQueue) -> int:
    counts = queue.backend.stats(time.time()).counts
    return sum(n for (state, _), n in counts.items() if state in ("complete", "error", "cancelled"))


class Pool:
    """One ``skunq work`` process (a WorkerPool supervisor and its children), own session."""

    def __init__(self, bench: Bench, queue_name: str, workers: int, with_scheduler: bool) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "skunkqueue",
            "work",
            "-q",
            queue_name,
            "--url",
            bench.url,
            "-r",
            *([ROUTE] * workers),
            "--import",
            "bench_tasks",
            "--log-level",
            bench.log_level,
        ]
        if not with_scheduler:
            self.argv.append("--no-scheduler")
        env = dict(os.environ)
        env["BENCH_QUEUE"] = queue_name
        env["SKUNKQUEUE_URL"] = bench.url
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(bench.workdir), env.get("PYTHONPATH")) if p
        )
        self.log_path = bench.workdir / f"pool-{queue_name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.started = time.time()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=bench.workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"worker pool exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL the whole session if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self.log.close()


def wait_for(
    predicate: Any, timeout: float, what: str, pool: Pool | None = None, interval: float = POLL
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if pool is not None:
            pool.check_alive()
        if time.monotonic() > deadline:
            extra = f"\npool output:\n{pool.tail()}" if pool is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# -- the benchmark ---------------------------------------------------------------------


class Bench:
    def __init__(
        self, url: str, workdir: Path, sizes: Sizes, log_level: str = WORKER_LOG_LEVEL
    ) -> None:
        self.url = url
        self.log_level = log_level
        self.workdir = workdir
        self.sizes = sizes
        self.run_id = uuid.uuid4().hex[:6]
        (workdir / "bench_tasks.py").write_text(TASKS_MODULE)
        sys.path.insert(0, str(workdir))
        self.tasks = importlib.import_module("bench_tasks")  # written just above

    def queue(self, phase: str, cron: bool = False) -> tuple[SkunkQueue, dict[str, Any]]:
        return self.tasks.register(f"bench-{self.run_id}-{phase}", self.url, cron=cron)

    def wait_ready(self, queue: SkunkQueue, pool: Pool, workers: int, scheduler: bool) -> float:
        """Wait until every worker advertises itself (and a scheduler leads); returns when."""

        def ready() -> bool:
            now = time.time()
            live = len(queue.backend.leases("worker:", now))
            leader = bool(queue.backend.leases("scheduler", now)) if scheduler else True
            return live >= workers and leader

        wait_for(ready, 30, "workers to start", pool, interval=0.01)
        return time.time()

    # 1. fire rate ----------------------------------------------------------------------

    def fire_rate(self) -> dict[str, Any]:
        queue, events = self.queue("fire")
        noop = events["noop"]
        n = self.sizes.fire_single
        started = time.perf_counter()
        for _ in range(n):
            noop.fire()
        single = time.perf_counter() - started
        # On Redis, the reference producer right after, in the same run: the
        # machine's speed moves both alike, so their ratio is comparable across runs.
        lpush = bench_redis.lpush_rate(self.url, n) if self.url.startswith("redis") else None

        m = self.sizes.fire_many
        started = time.perf_counter()
        for offset in range(0, m, FIRE_MANY_BATCH):
            noop.fire_many([()] * min(FIRE_MANY_BATCH, m - offset))
        many = time.perf_counter() - started
        queued = queue.backend.stats(time.time()).counts.get(("queued", ROUTE), 0)
        if queued != n + m:
            raise RuntimeError(f"fired {n + m} jobs but {queued} are queued")
        queue.close()
        return {
            "fire_jobs": n,
            "fire_seconds": round(single, 4),
            "fire_per_s": round(n / single),
            "lpush_per_s": lpush,
            "fire_many_jobs": m,
            "fire_many_batch": FIRE_MANY_BATCH,
            "fire_many_seconds": round(many, 4),
            "fire_many_per_s": round(m / many),
        }

    # 2. drain rate ---------------------------------------------------------------------

    def drain(self, workers: int) -> dict[str, Any]:
        queue, events = self.queue(f"drain{workers}")
        n = self.sizes.drain
        for offset in range(0, n, FIRE_MANY_BATCH):
            events["noop"].fire_many([()] * min(FIRE_MANY_BATCH, n - offset))
        pool = Pool(self, queue.name, workers, with_scheduler=False)
        try:
            wait_for(
                lambda: complete_count(queue) >= n,
                300,
                f"{n} jobs to complete",
                pool,
                interval=self.sizes.poll,
            )
            done = time.time()
            # Worker processes' memory once they have run their share of the jobs.
            pss = [bench_redis.pss_mib(pid) for pid in bench_redis.children(pool.popen.pid)]
            supervisor_pss = bench_redis.pss_mib(pool.popen.pid)
        finally:
            pool.stop()
        records = queue.backend.list_jobs(time.time(), state="complete", limit=n + 1)
        first_start = min(r.started_at for r in records if r.started_at is not None)
        last_finish = max(r.finished_at for r in records if r.finished_at is not None)
        stored = sum(1 for r in records if r.result == "null" and r.attempts == 1)
        redelivered = sum(1 for r in records if r.deliveries != 1)
        queue.close()
        if len(records) != n or stored != n:
            raise RuntimeError(
                f"drain: {len(records)} complete records, {stored} with result stored, want {n}"
            )
        from_pool_start = done - pool.started
        in_flight = last_finish - first_start
        return {
            "workers": workers,
            "jobs": n,
            "pool_start_to_done_s": round(from_pool_start, 3),
            "per_s_from_pool_start": round(n / from_pool_start),
            "first_start_to_last_finish_s": round(in_flight, 3),
            "per_s_from_first_start": round(n / in_flight),
            "startup_s": round(first_start - pool.started, 3),
            "redelivered": redelivered,
            "worker_pss_mib": [p["pss_mib"] for p in pss if p],
            "worker_rss_mib": [p["rss_mib"] for p in pss if p],
            "supervisor_pss_mib": supervisor_pss["pss_mib"] if supervisor_pss else None,
        }

    # 3. delayed jobs -------------------------------------------------------------------

    def delayed(self) -> dict[str, Any]:
        workers = 2
        queue, events = self.queue("delayed")
        pool = Pool(self, queue.name, workers, with_scheduler=True)
        try:
            self.wait_ready(queue, pool, workers, scheduler=True)
            n, spread = self.sizes.delayed, self.sizes.delayed_spread
            lead = self.sizes.delayed_lead
            base = time.time() + lead
            etas = [base + spread * i / n for i in range(n)]
            handles = [
                events["stamp"].fire_at(datetime.fromtimestamp(eta, timezone.utc)) for eta in etas
            ]
            fired_by = time.time()
            wait_for(
                lambda: finished_count(queue) >= n,
                spread + lead + 60,
                f"{n} delayed jobs",
                pool,
                interval=self.sizes.poll,
            )
        finally:
            pool.stop()
        late_start, late_claim = [], []
        for handle in handles:
            record = handle.record()
            if record is None or record.state != "complete":
                raise RuntimeError(f"delayed job {handle.id} ended {record and record.state}")
            late_start.append(queue.decode_result(record) - record.eta)
            late_claim.append(record.started_at - record.eta)
        queue.close()
        return {
            "jobs": n,
            "lead_s": lead,
            "spread_s": spread,
            "workers": workers,
            "fired_before_first_eta": fired_by < base,
            "start_minus_eta": summary_ms(late_start),
            "claim_minus_eta": summary_ms(late_claim),
        }

    # 4. cron ticks ---------------------------------------------------------------------

    def cron(self) -> dict[str, Any]:
        workers = 2
        queue, _ = self.queue("cron")
        pool = Pool(self, queue.name, workers, with_scheduler=True)
        try:
            ready = self.wait_ready(queue, pool, workers, scheduler=True)
            # Store the schedule now that a scheduler leads. The scheduler re-reads stored
            # schedules once a second, so ticks in the first 1.5 s are warm-up, reported apart.
            cron_queue, _ = self.queue("cron", cron=True)
            cron_queue.close()
            warm_until = ready + 1.5
            wanted = self.sizes.ticks

            def ticks() -> list[Any]:
                records = queue.backend.list_jobs(time.time(), state="complete", limit=1000)
                return [r for r in records if r.schedule == "bench.tick"]

            wait_for(
                lambda: sum(1 for r in ticks() if r.eta >= warm_until) >= wanted,
                wanted + 30,
                f"{wanted} cron ticks",
                pool,
                interval=max(0.2, self.sizes.poll),
            )
        finally:
            pool.stop()
            queue.backend.remove_schedule("bench.tick")
        records = sorted(ticks(), key=lambda r: r.eta)
        measured = [r for r in records if r.eta >= warm_until][:wanted]
        warmup = [r for r in records if r.eta < warm_until]
        late = [queue.decode_result(r) - r.eta for r in measured]
        late_claim = [r.started_at - r.eta for r in measured]
        etas = [r.eta for r in measured]
        missing = round(etas[-1] - etas[0]) + 1 - len(etas) if etas else 0
        queue.close()
        return {
            "cron": "* * * * * */1",
            "misfire": "all",
            "ticks": len(measured),
            "missing_ticks": missing,
            "start_minus_tick": summary_ms(late),
            "claim_minus_tick": summary_ms(late_claim),
            "warmup_ticks_ms": [round((queue.decode_result(r) - r.eta) * 1000, 1) for r in warmup],
        }


# -- report ----------------------------------------------------------------------------

#: Targets per backend (issue 1 for SQLite, issue 3 for Redis); a figure without an entry
#: is reported without a verdict.
TARGETS: dict[str, dict[str, float]] = {
    "sqlite": {"drain": 2500, "delayed_p99_ms": 50.0},
    "redis": {
        "fire": 10000,
        "fire_many": 50000,
        "drain": 8000,
        "delayed_p50_ms": 2.0,
        "delayed_p99_ms": 10.0,
        "delayed_max_ms": 25.0,
        "promotion": 50000,
        "bytes_per_job": 400,
        "worker_pss_mib": 50,
    },
}
#: Counts where the worst run is reported, not the median.
WORST_OF_RUNS = ("early", "redelivered", "missing_ticks")


def median_merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One dict from several runs of a phase: the median of each number (with the
    per-run values beside it as ``<key>_runs``), the worst of WORST_OF_RUNS, nested dicts
    merged the same way, lists concatenated."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(first, bool):
            merged[key] = all(values)
        elif isinstance(first, (int, float)) and all(isinstance(v, (int, float)) for v in values):
            if key in WORST_OF_RUNS:
                merged[key] = max(values)
            else:
                middle = statistics.median(values)
                merged[key] = round(middle) if isinstance(first, int) else round(middle, 3)
                merged[f"{key}_runs"] = values
        elif isinstance(first, dict):
            merged[key] = median_merge(values)
        elif isinstance(first, list):
            merged[key] = [item for v in values for item in v]
        else:
            merged[key] = first
    return merged


def verdict(ok: bool, quick: bool) -> str:
    if quick:
        return "(quick run: not comparable)"
    return "ok" if ok else "MISSED"


def rate(d: dict[str, Any], key: str) -> str:
    """``12,345 jobs/s``, with the per-run range when there were several runs."""
    text = f"{d[key]:,} jobs/s"
    runs = d.get(f"{key}_runs")
    if runs:
        text += f" ({min(runs):,}-{max(runs):,})"
    return text


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    quick = results["quick"]
    targets = TARGETS.get(results["backend"], {})
    runs = results.get("runs", 1)
    server = results.get("redis_server")
    lines = [
        f"SkunkQueue {m['skunkqueue']} benchmark, {m['date']}{'  (QUICK MODE: tiny N, not comparable)' if quick else ''}",
        f"backend: {results['url']}"
        + (f" ({runs} runs per phase, medians; per-run range in brackets)" if runs > 1 else ""),
        f"machine: nproc={m['nproc']}, {m['cpu']}, {m['os']}, Python {m['python']}, SQLite {m['sqlite']}",
    ]
    if server:
        lines.append(
            f"redis: server {server.get('valkey_version') or server['redis_version']}"
            f"{' (Valkey)' if server.get('valkey_version') else ''}, "
            f"redis-py {server['redis_py']}, reply parser {server['redis_parser']}"
        )
    lines += bench_mongo.header(results)
    lines += bench_fdb.header(results)
    lines += [
        (
            f"workers: real `skunq work` processes run with --log-level {results['worker_log_level']} "
            "(at INFO they log one line per job start and finish); leases held, results stored"
        ),
        "",
    ]

    def target(key: str, ok: bool, text: str) -> str:
        if key not in targets:
            return ""
        return f"{text}  {verdict(ok, quick)}"

    rows: list[tuple[str, str, str]] = []
    f = results.get("fire")
    if f:
        t = targets.get("fire", 0)
        rows.append(
            (
                f"fire rate: event.fire(), one write per job ({f['fire_jobs']:,} jobs)",
                rate(f, "fire_per_s"),
                target("fire", f["fire_per_s"] >= t, f">= {t:,.0f}"),
            )
        )
        if f.get("lpush_per_s"):
            share = f["fire_per_s"] / f["lpush_per_s"]
            rows.append(
                (
                    "   same runs, one redis-py LPUSH per job (issue's reference: ~14,000/s)",
                    f"{rate(f, 'lpush_per_s')}; fire() = {share:.0%} of it",
                    "",
                )
            )
        rt = results.get("round_trip")
        if rt:
            ceiling = f"{rt['redis_py_ping_per_s']:,}/s"
            bench_ping = rt.get("redis_benchmark_1_client_ping_inline_per_s")
            bench_lpush = rt.get("redis_benchmark_1_client_lpush_per_s")
            rows.append(
                (
                    f"   ceiling, one round trip: redis-py PING p50 {rt['redis_py_ping_us_p50']:.0f} us",
                    ceiling,
                    "",
                )
            )
            if bench_ping:
                rows.append(
                    (
                        "   redis-benchmark, 1 client, no pipelining: PING / LPUSH",
                        f"{bench_ping:,} / {bench_lpush:,} req/s",
                        "",
                    )
                )
            many_ping = rt.get("redis_benchmark_50_clients_ping_inline_per_s")
            if many_ping:
                rows.append(
                    (
                        "   redis-benchmark, 50 clients: PING / LPUSH",
                        f"{many_ping:,} / {rt.get('redis_benchmark_50_clients_lpush_per_s', 0):,} req/s",
                        "",
                    )
                )
        t = targets.get("fire_many", 0)
        rows.append(
            (
                f"fire rate: event.fire_many(), {f['fire_many_batch']} per call ({f['fire_many_jobs']:,} jobs)",
                rate(f, "fire_many_per_s"),
                target("fire_many", f["fire_many_per_s"] >= t, f">= {t:,.0f}"),
            )
        )
    pss: list[float] = []
    for d in results.get("drain", []):
        t = targets.get("drain", 0)
        rows.append(
            (
                f"drain, {d['workers']} worker procs, {d['jobs']:,} no-op: pool start -> all complete",
                rate(d, "per_s_from_pool_start"),
                target("drain", d["per_s_from_pool_start"] >= t, f">= {t:,.0f}"),
            )
        )
        rows.append(
            (
                f"   same run: first job start -> last job finish (startup {d['startup_s']:.2f} s excluded)",
                rate(d, "per_s_from_first_start"),
                "",
            )
        )
        pss += d.get("worker_pss_mib", [])
    if pss:
        t = targets.get("worker_pss_mib", 0)
        rows.append(
            (
                f"worker process PSS after a drain ({len(pss)} workers over all drains)",
                f"max {max(pss):.1f} MiB, median {statistics.median(pss):.1f} MiB",
                target("worker_pss_mib", max(pss) <= t, f"<= {t:g} MiB"),
            )
        )
    dl = results.get("delayed")
    if dl:
        s = dl["start_minus_eta"]
        checks = [
            (k, s[f"{k}_ms"] <= targets[f"delayed_{k}_ms"])
            for k in ("p50", "p99", "max")
            if f"delayed_{k}_ms" in targets
        ]
        wanted = " / ".join(f"{k} <= {targets[f'delayed_{k}_ms']:g}" for k, _ in checks)
        ok = all(c for _, c in checks) and s["early"] == 0
        rows.append(
            (
                f"delayed jobs ({s['n']} fire_at, etas over {dl['spread_s']:g} s): start - eta",
                f"p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} / max {s['max_ms']:.1f} ms, early {s['early']}",
                f"{wanted} ms, early 0  {verdict(ok, quick)}" if checks else "",
            )
        )
    c = results.get("cron")
    if c:
        s = c["start_minus_tick"]
        rows.append(
            (
                f"cron ticks ({s['n']} of '{c['cron']}', misfire={c['misfire']}): start - tick",
                f"p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} / max {s['max_ms']:.1f} ms, early {s['early']}",
                "",
            )
        )
    p = results.get("promotion")
    if p:
        t = targets.get("promotion", 0)
        rows.append(
            (
                f"promotion: {p['jobs']:,} due jobs, one scheduler's promote() calls, in-process",
                rate(p, "per_s") + f", {p['ms_per_call']:.2f} ms/call",
                target("promotion", p["per_s"] >= t, f">= {t:,.0f}"),
            )
        )
    mem = results.get("memory")
    if mem:
        t = targets.get("bytes_per_job", 0)
        worst = max(mem["used_memory_delta_per_job"], mem["memory_usage_total_per_job"])
        rows.append(
            (
                f"Redis bytes per scheduled job ({mem['jobs']:,} x demo.add(4, 5)): used_memory delta",
                f"{mem['used_memory_delta_per_job']:.0f} B",
                target("bytes_per_job", worst <= t, f"<= {t:g} B"),
            )
        )
        rows.append(
            (
                "   MEMORY USAGE: record hash + scheduled index share",
                f"{mem['memory_usage_records_per_job']:.0f} + {mem['memory_usage_scheduled_index_per_job']:.0f}"
                f" = {mem['memory_usage_total_per_job']:.0f} B",
                "",
            )
        )
    stand_in = bench_mongo.stand_in_label(results)
    if stand_in:  # every speed figure on SecantusDB carries the label
        rows = [(a, b, t or (stand_in if b else "")) for a, b, t in rows]
    simulator = bench_fdb.label(results)
    if simulator:  # every figure on the FoundationDB simulator carries the label
        rows = [(a, b, t or (simulator if b else "")) for a, b, t in rows]
    if results.get("explain"):
        rows += bench_mongo.rows(results["explain"])
    for key in ("contention", "contention_procs"):
        if results.get(key):
            rows += bench_fdb.rows(results[key])
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines.append(f"{'figure':<{width}}  {'measured':<{vwidth}}  target")
    lines += [f"{a:<{width}}  {b:<{vwidth}}  {t}".rstrip() for a, b, t in rows]
    notes = []
    if dl and not dl["fired_before_first_eta"]:
        notes.append(
            f"note: firing the delayed jobs took longer than the {dl['lead_s']:g} s lead; "
            "early etas were queued at once"
        )
    if c:
        notes.append(
            f"note: cron warm-up ticks (schedule just stored) excluded, lateness ms: {c['warmup_ticks_ms']}; "
            f"missing ticks in the measured run: {c['missing_ticks']}"
        )
    if results.get("explain"):
        notes += bench_mongo.details(results["explain"])
    for key in ("contention", "contention_procs"):
        if results.get(key):
            notes += bench_fdb.details(results[key])
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=None, help="backend URL (default: a fresh SQLite file in a temp dir)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run of every phase")
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="also write the raw numbers here"
    )
    parser.add_argument(
        "--drain-workers",
        default=None,
        help="worker process counts to drain with (default 2,3; 2 with --mongo)",
    )
    parser.add_argument("--drain-jobs", type=int, default=None, help="no-op jobs per drain run")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated phases to run (fire, drain, delayed, cron; on Redis also "
        "promote, which measures promotion and bytes per scheduled job; on MongoDB also "
        "explain, the explain() check of the queries per claim; on the FoundationDB "
        "simulator also contention, conflicts per 1,000 claims with 8 claimer threads, and "
        "the opt-in contention-procs, the same with 8 claimer processes); default: all",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="start an own redis-server on a free loopback port and benchmark it",
    )
    parser.add_argument(
        "--mongo",
        action="store_true",
        help="start an own SecantusDB (a MongoDB stand-in) on a free loopback port and "
        "benchmark it, with small N, plus the explain() check",
    )
    parser.add_argument(
        "--fdbsim",
        action="store_true",
        help="start an own FoundationDB simulator (python -m skunkqueue.testing.fdb_sim) "
        "on a free loopback port and benchmark it, with small N, plus the claim-contention "
        "figure; simulator figures say nothing about a cluster's speed",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per phase, medians reported (default 3 on Redis, 1 otherwise)",
    )
    parser.add_argument(
        "--worker-log-level",
        default=WORKER_LOG_LEVEL,
        help=f"--log-level of the worker pools (default {WORKER_LOG_LEVEL}; INFO logs every job)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp work directory (logs, database)"
    )
    args = parser.parse_args(argv)
    if args.redis and args.url:
        parser.error("--redis starts its own server: give --url redis://... to use another")
    if args.mongo and (args.url or args.redis):
        parser.error("--mongo starts its own server: give --url mongodb://... to use another")
    if args.fdbsim and (args.url or args.redis or args.mongo):
        parser.error("--fdbsim starts its own simulator: give --url fdbsim+tcp://... for another")

    if args.mongo:
        sizes = MONGO_QUICK if args.quick else MONGO
    elif args.fdbsim or (args.url and args.url.startswith("fdbsim+tcp://")):
        sizes = FDBSIM_QUICK if args.quick else FDBSIM
    else:
        sizes = QUICK if args.quick else FULL
    if args.drain_jobs:
        sizes.drain = args.drain_jobs
    workdir = Path(tempfile.mkdtemp(prefix="skunq-bench-"))
    server: bench_redis.OwnRedis | bench_mongo.OwnSecantus | bench_fdb.OwnFdbSim | None = None
    try:
        if args.redis:
            server = bench_redis.OwnRedis(workdir).start()
        elif args.mongo:
            server = bench_mongo.OwnSecantus(workdir).start()
        elif args.fdbsim:
            server = bench_fdb.OwnFdbSim(workdir).start()
        return run(args, parser, sizes, workdir, server)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    sizes: Sizes,
    workdir: Path,
    server: bench_redis.OwnRedis | bench_mongo.OwnSecantus | bench_fdb.OwnFdbSim | None,
) -> int:
    if server is not None:
        url = server.url
    else:
        url = absolute_url(args.url) if args.url else f"sqlite:///{workdir / 'bench.db'}"
    probe = SkunkQueue("bench-probe", url=url)
    shared = probe.backend.shared_across_processes
    kind = type(probe.backend).__name__
    backend = {
        "RedisBackend": "redis",
        "MongoBackend": "mongodb",
        "FoundationDBBackend": "fdb",
    }.get(kind, "sqlite")
    probe.close()
    if not shared:
        parser.error(
            f"{url}: this backend lives in one process; the benchmark needs worker processes"
        )
    default_phases = {
        "redis": "fire,drain,delayed,cron,promote",
        "mongodb": "explain,fire,drain,delayed,cron",
        "fdb": "fire,drain,delayed,cron,contention",
    }.get(backend, "fire,drain,delayed,cron")
    phases = {p.strip() for p in (args.only or default_phases).split(",") if p.strip()}
    runs = args.runs or (3 if backend == "redis" else 1)
    results: dict[str, Any] = {
        "machine": machine(),
        "url": url,
        "backend": backend,
        "runs": runs,
        "quick": args.quick,
        "worker_log_level": args.worker_log_level.upper(),
        "sizes": vars(sizes),
    }
    started = time.monotonic()
    bench = Bench(url, workdir, sizes, args.worker_log_level.upper())

    def repeat(what: str, phase: Any) -> dict[str, Any]:
        done = []
        for i in range(runs):
            print(f"{what} (run {i + 1} of {runs}) ...", file=sys.stderr, flush=True)
            bench.run_id = uuid.uuid4().hex[:6]  # fresh queue names for every run
            done.append(phase())
            tidy()
        return median_merge(done)

    def tidy() -> None:
        """On MongoDB, delete the run's queues: stats() on the stand-in scans the whole
        collection, so one phase's leftovers would slow the next."""
        if backend == "mongodb":
            bench_mongo.drop_queues(url, f"bench-{bench.run_id}-")

    if backend == "redis":
        import redis

        results["redis_server"] = {**bench_redis.server_info(url), "redis_py": redis.__version__}
    if backend == "mongodb":
        results["mongo_server"] = bench_mongo.server_info(url)
    if backend == "fdb":
        results["fdb_server"] = bench_fdb.server_info(url)
    if "explain" in phases and backend == "mongodb":
        print("explain() of the queries per claim ...", file=sys.stderr, flush=True)
        results["explain"] = bench_mongo.explain_check(url)
    if "fire" in phases:
        results["fire"] = repeat("fire rate", bench.fire_rate)
        if backend == "redis":
            print("round-trip ceiling ...", file=sys.stderr, flush=True)
            results["round_trip"] = bench_redis.round_trip(url, sizes.pings)
    if "drain" in phases:
        results["drain"] = []
        counts = args.drain_workers or ("2" if backend in ("mongodb", "fdb") else "2,3")
        for workers in (int(w) for w in counts.split(",")):
            results["drain"].append(
                repeat(f"drain with {workers} workers", lambda w=workers: bench.drain(w))
            )
    if "delayed" in phases:
        results["delayed"] = repeat("delayed jobs", bench.delayed)
    if "cron" in phases:
        print("cron ticks ...", file=sys.stderr, flush=True)
        results["cron"] = bench.cron()
        tidy()
    if "promote" in phases and backend == "redis":
        # The seed demo's queue name on an own server; a suffixed one on a shared server.
        name = "demo" if server is not None else f"demo-{bench.run_id}"

        def promote() -> dict[str, Any]:
            found = bench_redis.scheduled_jobs(url, name, sizes.scheduled)
            results.setdefault("memory_runs", []).append(found["memory"])
            return found["promotion"]

        results["promotion"] = repeat("promotion and bytes per scheduled job", promote)
        memory = results.pop("memory_runs")
        results["memory_sample_record"] = memory[0]["record_fields"]
        for m in memory:
            m.pop("record_fields")
        results["memory"] = median_merge(memory)
    if "contention" in phases and backend == "fdb":
        # In-process fdbsim:// databases of its own, whatever --url names: the conflicts
        # are counted by wrapping the simulator's on_error in this process.
        results["contention"] = bench_fdb.contention(
            jobs=bench_fdb.CONTENTION_JOBS // (10 if args.quick else 1),
            runs=1 if args.quick else bench_fdb.CONTENTION_RUNS,
            progress=lambda what: print(f"{what} ...", file=sys.stderr, flush=True),
        )
    if "contention-procs" in phases and url.startswith("fdbsim+tcp://"):
        # Opt-in: the same cases with claimer processes on the served simulator.
        results["contention_procs"] = bench_fdb.contention_processes(
            url,
            jobs=bench_fdb.CONTENTION_PROCESS_JOBS // (10 if args.quick else 1),
            runs=1 if args.quick else bench_fdb.CONTENTION_RUNS,
            progress=lambda what: print(f"{what} ...", file=sys.stderr, flush=True),
        )
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print(report(results))
    print(f"(whole run: {results['elapsed_s']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
