"""The Redis parts of benchmarks/bench.py: an own redis-server, the round-trip ceiling,
promotion rate, bytes per scheduled job, and worker PSS (also used for SQLite).

Imported by bench.py only; run ``python benchmarks/bench.py --redis``.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from skunkqueue import SkunkQueue
from skunkqueue.persistence.base import SCHEDULER_LEASE, Fence

PROMOTE_CHUNK = 5000  # jobs per put while loading the promotion/memory queue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnRedis:
    """A ``redis-server`` of the bench's own on a free loopback port, no persistence,
    stopped by PID (the same way tests/servers.py RedisServer runs one)."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise SystemExit("--redis: redis-server is not installed")
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> OwnRedis:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def parser_name() -> str:
    """Which reply parser redis-py uses: hiredis (C) or the pure-Python one."""
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return "unknown"
    return "hiredis" if HIREDIS_AVAILABLE else "pure Python (hiredis not installed)"


def server_info(url: str) -> dict[str, Any]:
    r = client(url)
    info = r.info("server")
    r.close()
    return {
        "redis_version": info.get("redis_version"),
        "valkey_version": info.get("valkey_version"),
        "redis_parser": parser_name(),
    }


def lpush_rate(url: str, n: int) -> int:
    """Jobs per second of the issue's reference producer: one redis-py LPUSH per job of
    a small payload, on one connection (the key is deleted afterwards)."""
    r = client(url)
    key = "skunkqueue-bench:lpush"
    payload = '{"args":[],"kwargs":{}}'
    r.ping()
    started = time.perf_counter()
    for _ in range(n):
        r.lpush(key, payload)
    elapsed = time.perf_counter() - started
    r.delete(key)
    r.close()
    return round(n / elapsed)


def round_trip(url: str, pings: int) -> dict[str, Any]:
    """The ceiling for one-round-trip-per-job: redis-py PINGs in a loop on one connection,
    and redis-benchmark's PING/LPUSH rates (one client without pipelining, and its
    default of 50 clients) against the same server."""
    r = client(url)
    for _ in range(200):
        r.ping()
    times = []
    for _ in range(pings):
        started = time.perf_counter()
        r.ping()
        times.append(time.perf_counter() - started)
    r.close()
    out: dict[str, Any] = {
        "redis_py_ping_us_p50": round(statistics.median(times) * 1e6, 1),
        "redis_py_ping_per_s": round(len(times) / sum(times)),
    }
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return out
    conn = r.connection_pool.connection_kwargs
    host, port = conn.get("host", "127.0.0.1"), conn.get("port", 6379)
    for label, extra in (("1_client", ["-c", "1", "-P", "1"]), ("50_clients", [])):
        try:
            text = subprocess.run(
                [binary, "-h", host, "-p", str(port), "-t", "ping,lpush", "-n", "100000",
                 "-q", *extra],
                capture_output=True, text=True, timeout=120,
            ).stdout  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        for name, rate in re.findall(r"([A-Z_]+): ([\d.]+) requests per second", text):
            out[f"redis_benchmark_{label}_{name.lower()}_per_s"] = round(float(rate))
    # redis-benchmark's LPUSH rows land on key 'mylist': leave the server as found.
    cleanup = client(url)
    cleanup.delete("mylist")
    cleanup.close()
    return out


def _drop_queue_keys(url: str, queue: str) -> None:
    r = client(url)
    batch = []
    for key in r.scan_iter(match=f"sq:{{{queue}}}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)
    r.close()


def scheduled_jobs(url: str, queue_name: str, n: int) -> dict[str, Any]:
    """Put ``n`` scheduled jobs of the seed demo's shape (``demo.add(4, 5)`` on route
    'foo', eta an hour ahead) on an empty queue, measure the memory they take, then
    promote them all with one fenced scheduler, in-process, with a fake ``now`` past
    every eta. Returns both figures; leaves no key of the queue behind."""
    _drop_queue_keys(url, queue_name)
    queue = SkunkQueue(queue_name, url=url)

    @queue.event(routes=["foo"], name="demo.add")
    def add(x: int, y: int) -> int:
        return x + y

    r = client(url)
    try:
        # Warm-up: one job loads the put script and creates the queue's keys.
        now = time.time()
        queue.backend.put(add.build_jobs((4, 5), None, now + 3600, now, None, None), now)
        before = int(r.info("memory")["used_memory"])

        now = time.time()
        eta = now + 3600
        put_started = time.perf_counter()
        ids = []
        for offset in range(0, n, PROMOTE_CHUNK):
            jobs = [
                add.build_jobs((4, 5), None, eta, now, None, None)[0]
                for _ in range(min(PROMOTE_CHUNK, n - offset))
            ]
            ids += [j.id for j in jobs]
            queue.backend.put(jobs, now)
        put_seconds = time.perf_counter() - put_started
        after = int(r.info("memory")["used_memory"])
        counts = queue.backend.stats(now).counts
        if counts.get(("scheduled", "foo"), 0) != n + 1:
            raise RuntimeError(f"memory: put {n} scheduled jobs, stats say {counts}")
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.memory_usage(f"sq:{{{queue_name}}}:j:{job_id}")
        record_bytes = sum(pipe.execute())
        index_bytes = r.memory_usage(f"sq:{{{queue_name}}}:scheduled", samples=0)
        sample = r.hgetall(f"sq:{{{queue_name}}}:j:{ids[0]}")
        memory = {
            "jobs": n,
            "used_memory_delta_per_job": round((after - before) / n, 1),
            "memory_usage_records_per_job": round(record_bytes / n, 1),
            "memory_usage_scheduled_index_per_job": round(index_bytes / n, 1),
            "memory_usage_total_per_job": round((record_bytes + index_bytes) / n, 1),
            "record_fields": sample,
            "put_per_s": round(n / put_seconds),
        }

        # Promotion: one scheduler's fenced promote calls, back to back, as the scheduler
        # loop makes them while ``more`` is set; ``now`` is past every eta.
        owner = f"bench-{uuid.uuid4().hex[:6]}"
        wall = time.time()
        lease = queue.backend.acquire_lease(SCHEDULER_LEASE, owner, wall, 7200.0)
        if lease is None:
            raise RuntimeError("promotion: the queue's scheduler lease is held by someone else")
        fence = Fence(SCHEDULER_LEASE, owner, lease.token)
        fake_now = eta + 1.0
        promoted, calls = 0, 0
        started = time.perf_counter()
        while True:
            report = queue.backend.sweep(fake_now, fence)
            promoted += report.promoted
            calls += 1
            if not report.more:
                break
        seconds = time.perf_counter() - started
        queue.backend.release_lease(SCHEDULER_LEASE, owner)
        counts = queue.backend.stats(fake_now).counts
        if promoted != n + 1 or counts.get(("queued", "foo"), 0) != n + 1:
            raise RuntimeError(f"promotion: promoted {promoted} of {n + 1}; stats say {counts}")
        promotion = {
            "jobs": promoted,
            "calls": calls,
            "seconds": round(seconds, 4),
            "per_s": round(promoted / seconds),
            "ms_per_call": round(seconds / calls * 1000, 3),
        }
    finally:
        r.close()
        queue.close()
        _drop_queue_keys(url, queue_name)
    return {"memory": memory, "promotion": promotion}


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def pss_mib(pid: int) -> dict[str, float] | None:
    """PSS and RSS of one process in MiB, from /proc/<pid>/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Rss"):
            values[name.lower() + "_mib"] = round(int(rest.split()[0]) / 1024, 1)
    return values or None
