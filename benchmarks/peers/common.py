"""Shared by the peer adapters: the stamp every task writes, process control, the scenarios.

Only needs redis-py, which both virtualenvs have. Every task, in every library, calls
``stamp()`` first thing: an RPUSH of ``time.time()`` (and the job's eta, for delayed jobs)
to the list ``stamps`` on a second redis-server that only holds stamps, so the library's
own server counts only the library's commands (INFO commandstats). Throughput and
lateness are computed from those records the same way for every library.

Besides its timings, a drain reports the workers' memory (PSS of every process the
worker command started, read while they are still up after the last job) and, on Redis,
the commands the library sent per job (INFO commandstats between CONFIG RESETSTAT after
the enqueue and the last start record; commands run inside Lua scripts and MULTI blocks
count too).

An adapter is run as ``python adapter_X.py SCENARIO --url URL --stamp-url URL --n N``
and prints one JSON object as its last line of output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import redis

STAMPS = "stamps"
HERE = os.path.dirname(os.path.abspath(__file__))

_client = None
_client_pid = None


def stamp_client() -> redis.Redis:
    """One connection per process (re-made after a fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["PEER_STAMP_URL"])
        _client_pid = os.getpid()
    return _client


def stamp(eta: float | None = None) -> None:
    now = time.time()
    value = f"{now!r}" if eta is None else f"{now!r} {eta!r}"
    stamp_client().rpush(STAMPS, value)


# -- processes -------------------------------------------------------------------------


class Procs:
    """Worker processes, each in its own session, logs in a temp dir; stopped by PID."""

    def __init__(self, argvs: list[list[str]], env: dict[str, str] | None = None) -> None:
        self.logdir = tempfile.mkdtemp(prefix="peer-workers-")
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, full_env.get("PYTHONPATH")) if p)
        full_env.update(env or {})
        self.popens = []
        self.logs = []
        for i, argv in enumerate(argvs):
            log = open(os.path.join(self.logdir, f"worker-{i}.log"), "wb")  # noqa: SIM115
            self.logs.append(log)
            self.popens.append(
                subprocess.Popen(
                    argv,
                    cwd=HERE,
                    env=full_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def check_alive(self) -> None:
        for p in self.popens:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.args} exited with {p.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        out = []
        for log in self.logs:
            log.flush()
            with open(log.name, errors="replace") as f:
                out.append(f"--- {log.name}\n" + f.read()[-2000:])
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.popens:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        for log in self.logs:
            log.close()


def process_tree(root_pids: list[int]) -> list[int]:
    """root_pids and all their descendants (from /proc, so Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name (field 2) may hold spaces; ppid follows its closing paren.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(root_pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory(root_pids: list[int]) -> dict[str, Any]:
    """Proportional set size (shared pages split between sharers) summed over a tree."""
    pss_kib, rss_kib, processes = 0, 0, 0
    for pid in process_tree(root_pids):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # a process that ended meanwhile (an RQ work horse, say)
            continue
        pss_kib += int(fields["Pss"].split()[0])
        rss_kib += int(fields["Rss"].split()[0])
        processes += 1
    return {
        "pss_mib": round(pss_kib / 1024, 1),
        "rss_mib": round(rss_kib / 1024, 1),
        "processes": processes,
    }


def library_redis() -> redis.Redis | None:
    url = os.environ["PEER_URL"]
    return redis.Redis.from_url(url) if url.startswith("redis") else None


def server_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def reset_commandstats() -> float | None:
    """Zero the library's server's command counters; returns its CPU seconds so far."""
    client = library_redis()
    if client is None:
        return None
    client.config_resetstat()
    cpu = server_cpu_s(client)
    client.close()
    return cpu


def commandstats(jobs: int, cpu_before: float | None) -> dict[str, Any] | None:
    """Commands the library's server ran since reset_commandstats(), and its CPU, per job."""
    client = library_redis()
    if client is None or cpu_before is None:
        return None
    stats = client.info("commandstats")
    cpu_after = server_cpu_s(client)
    client.close()
    ignored = {"config|resetstat", "info", "config"}
    by_command = {
        name[len("cmdstat_") :]: value["calls"]
        for name, value in stats.items()
        if name[len("cmdstat_") :] not in ignored
    }
    total = sum(by_command.values())
    scripts = sum(
        by_command.get(c, 0)
        for c in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")
    )
    return {
        "per_job": round(total / jobs, 2),
        "total": total,
        "scripts_per_job": round(scripts / jobs, 2),
        "multi_per_job": round(by_command.get("multi", 0) / jobs, 2),
        "server_cpu_us_per_job": round((cpu_after - cpu_before) / jobs * 1e6, 1),
        "by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
    }


def wait_stamps(n: int, timeout: float, procs: Procs | None = None) -> None:
    client = stamp_client()
    deadline = time.monotonic() + timeout
    while client.llen(STAMPS) < n:
        if procs is not None:
            procs.check_alive()
        if time.monotonic() > deadline:
            extra = f"\n{procs.tail()}" if procs else ""
            raise TimeoutError(f"{client.llen(STAMPS)} of {n} stamps after {timeout} s{extra}")
        time.sleep(0.005)


def read_stamps() -> list[tuple[float, float | None]]:
    out = []
    for raw in stamp_client().lrange(STAMPS, 0, -1):
        parts = raw.decode().split()
        out.append((float(parts[0]), float(parts[1]) if len(parts) > 1 else None))
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- scenarios -------------------------------------------------------------------------


def scenario_enqueue(enqueue_all: Callable[[int], Any], n: int) -> dict[str, Any]:
    """One producer, n no-op jobs, through the library's enqueue call; no workers."""
    cpu_before = reset_commandstats()
    started = time.perf_counter()
    enqueue_all(n)
    seconds = time.perf_counter() - started
    return {
        "jobs": n,
        "seconds": round(seconds, 4),
        "per_s": round(n / seconds),
        "commands": commandstats(n, cpu_before),
    }


def scenario_drain(
    enqueue_all: Callable[[int], Any],
    worker_argvs: list[list[str]],
    n: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """n queued no-op jobs; time from worker start until the n-th start-time record."""
    enqueue_all(n)
    cpu_before = reset_commandstats()
    t0 = time.time()
    procs = Procs(worker_argvs, env)
    try:
        wait_stamps(n, 600, procs)
        commands = commandstats(n, cpu_before)
        mem = memory([p.pid for p in procs.popens])
    finally:
        procs.stop()
    starts = sorted(s for s, _ in read_stamps())
    last = starts[n - 1]
    return {
        "jobs": n,
        "workers_start_to_last_s": round(last - t0, 4),
        "per_s": round(n / (last - t0)),
        "startup_s": round(starts[0] - t0, 4),
        "per_s_first_to_last": round((n - 1) / max(1e-9, last - starts[0])),
        "extra_stamps": len(starts) - n,
        "commands": commands,
        "memory": mem,
    }


def scenario_delayed(
    schedule: Callable[[float], Any],
    worker_argvs: list[list[str]],
    n: int,
    spread: float,
    lead: float,
    env: dict[str, str] | None = None,
    schedule_many: Callable[[list[float]], Any] | None = None,
) -> dict[str, Any]:
    """Workers (and scheduler) up; n jobs with etas over ``spread`` s from now + ``lead``.

    A warm-up delayed job (eta now + 0.2 s) must start before the measured jobs are
    sent, so every worker and scheduler is up and polling.
    """
    procs = Procs(worker_argvs, env)
    try:
        schedule(time.time() + 0.2)
        wait_stamps(1, 60, procs)
        stamp_client().delete(STAMPS)
        base = time.time() + lead
        etas = [base + spread * i / n for i in range(n)]
        if schedule_many is not None:
            schedule_many(etas)
        else:
            for eta in etas:
                schedule(eta)
        sent_by = time.time()
        wait_stamps(n, spread + lead + 60, procs)
    finally:
        procs.stop()
    late = [(s - eta) * 1000 for s, eta in read_stamps() if eta is not None]
    return {
        "jobs": n,
        "spread_s": spread,
        "lead_s": lead,
        "sent_before_first_eta": sent_by < base,
        "p50_ms": round(percentile(late, 50), 2),
        "p99_ms": round(percentile(late, 99), 2),
        "max_ms": round(max(late), 2),
        "min_ms": round(min(late), 2),
        "early": sum(1 for x in late if x < 0),
        "stamps": len(late),
    }


EARLY_S = 5.0


def scenario_cron(
    worker_argvs: list[list[str]], duration: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """A once-a-minute cron job ('* * * * *'), workers and scheduler up for ``duration`` s."""
    cron_env = {"PEER_CRON": "1", **(env or {})}
    t0 = time.time()
    procs = Procs(worker_argvs, cron_env)
    try:
        while time.time() < t0 + duration:
            procs.check_alive()
            time.sleep(0.2)
    finally:
        procs.stop()
    return {
        "duration_s": duration,
        **cron_lateness([s for s, _ in read_stamps()], t0, t0 + duration),
    }


def cron_lateness(starts: list[float], t0: float, t_end: float) -> dict[str, Any]:
    """Each start belongs to the last minute boundary before it (or to the next one, if it
    is less than EARLY_S before that: an early start): lateness = start - boundary.
    Boundaries at least 10 s after t0 and 10 s before t_end are the ticks expected; a
    boundary started twice counts as a duplicate, one outside the window as unexpected.
    """
    first = int((t0 + 10) // 60 + 1) * 60
    expected = list(range(first, int(t_end - 10) + 1, 60))
    per_boundary: dict[int, list[float]] = {}
    for start in starts:
        boundary = int((start + EARLY_S) // 60) * 60
        per_boundary.setdefault(boundary, []).append((start - boundary) * 1000)
    late = [min(per_boundary[b]) for b in expected if b in per_boundary]
    return {
        "expected_ticks": len(expected),
        "ticks": len(late),
        "missing": len(expected) - len(late),
        "duplicates": sum(len(per_boundary[b]) - 1 for b in expected if b in per_boundary),
        "unexpected": sum(len(v) for b, v in per_boundary.items() if b not in expected),
        "lateness_ms": [round(x, 1) for x in late],
        "p50_ms": round(percentile(late, 50), 1) if late else None,
        "max_ms": round(max(late), 1) if late else None,
        "early": sum(1 for x in late if x < 0),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["enqueue", "drain", "delayed", "cron"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--stamp-url", required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--spread", type=float, default=3.0)
    ap.add_argument("--lead", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=200.0, help="cron: seconds to watch")
    ap.add_argument("--batch", type=int, default=0, help="enqueue in batches (if supported)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variant", default="", help="an adapter-specific configuration")
    args = ap.parse_args()
    # SIGTERM from the harness (timeout, Ctrl-C) unwinds, so workers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["PEER_URL"] = args.url
    os.environ["PEER_STAMP_URL"] = args.stamp_url
    return args


def emit(result: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
