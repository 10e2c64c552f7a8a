"""Peer benchmark: SkunkQueue next to Python peers, same machine, same Redis, same run.

    python benchmarks/peers/run.py [--rounds 3] [--smoke] [--only rq,huey]
                                   [--scenarios enqueue,drain,delayed,cron]
    python benchmarks/peers/run.py --render docs/peers/results.json   # tables and chart only

Creates (if missing) two virtualenvs, .tools/peers-main (celery rq huey dramatiq redis
hiredis matplotlib, and skunkqueue from this checkout) and .tools/peers-arq (arq, which
pins redis-py < 6); starts two redis-servers on free loopback ports (the libraries' and
one for the start records every task writes); runs every library's adapter
(benchmarks/peers/adapter_*.py) in its own subprocess, in interleaved rounds of enqueue,
drain and delayed (Redis, and SQLite for SkunkQueue and Huey), with redis-benchmark at
the start of each round, then the cron scenario once with every library side by side;
writes docs/peers/results.{json,md,png} and the tables into docs/peers/README.md; stops
what it started by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = REPO / ".tools"
DOCS = REPO / "docs" / "peers"

VENVS = {
    "peers-main": [
        "celery",
        "rq",
        "huey",
        "dramatiq",
        "redis",
        "hiredis",
        "matplotlib",
        "-e",
        str(REPO),
    ],
    "peers-arq": ["arq"],
}

# Every library: its adapter, its virtualenv, its store ("redis": the harness's
# redis-server; "sqlite": a fresh file per run), and per scenario the adapter's extra
# argv (a scenario not listed: the library lacks it). "n" overrides a scenario's job
# count: the drain headline is a steady-state rate (first start to last start), which
# does not depend on N, so peers below ~1,000 jobs/s drain 2,000 jobs instead of 10,000
# to keep the whole run under 20 minutes; the tables give each row's N.
LIBS: list[dict[str, Any]] = [
    {
        "name": "redis-py ceiling",
        "adapter": "adapter_redis.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": []},
    },
    {
        "name": "redis-py ceiling, pipelined",
        "adapter": "adapter_redis.py",
        "venv": "peers-main",
        "scenarios": {"drain": ["--variant", "pipelined"]},
    },
    {
        "name": "skunkqueue",
        "adapter": "adapter_skunkqueue.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": [], "cron": []},
    },
    {
        "name": "skunkqueue fire_many(500)",
        "adapter": "adapter_skunkqueue.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": ["--batch", "500"]},
    },
    {
        "name": "rq",
        "adapter": "adapter_rq.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": [], "cron": []},
        "n": {"drain": 2000},
    },
    {
        "name": "rq SimpleWorker",
        "adapter": "adapter_rq.py",
        "venv": "peers-main",
        "scenarios": {"drain": ["--variant", "simple"], "delayed": ["--variant", "simple"]},
        "n": {"drain": 2000},
    },
    {
        "name": "huey",
        "adapter": "adapter_huey.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": [], "cron": []},
    },
    {
        "name": "celery",
        "adapter": "adapter_celery.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": [], "cron": []},
        "n": {"drain": 2000},
    },
    {
        "name": "celery solo",
        "adapter": "adapter_celery.py",
        "venv": "peers-main",
        "scenarios": {"drain": ["--variant", "solo"]},
        "n": {"drain": 2000},
    },
    {
        "name": "dramatiq",
        "adapter": "adapter_dramatiq.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
    {
        "name": "arq",
        "adapter": "adapter_arq.py",
        "venv": "peers-arq",
        "scenarios": {"enqueue": [], "drain": [], "delayed": [], "cron": []},
        "n": {"drain": 2000},
    },
    {
        "name": "skunkqueue sqlite",
        "adapter": "adapter_skunkqueue.py",
        "venv": "peers-main",
        "store": "sqlite",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
    {
        "name": "skunkqueue sqlite fire_many(500)",
        "adapter": "adapter_skunkqueue.py",
        "venv": "peers-main",
        "store": "sqlite",
        "scenarios": {"enqueue": ["--batch", "500"]},
    },
    {
        "name": "huey sqlite",
        "adapter": "adapter_huey.py",
        "venv": "peers-main",
        "store": "sqlite",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
]
ROUND_SCENARIOS = ["enqueue", "drain", "delayed"]
STORES = ["redis", "sqlite"]
REFERENCE = {"redis": "skunkqueue", "sqlite": "skunkqueue sqlite"}


def store(lib: dict[str, Any]) -> str:
    return lib.get("store", "redis")


def job_count(lib: dict[str, Any], scenario: str, sizes: dict[str, Any]) -> int:
    n = sizes[scenario]
    return min(n, lib.get("n", {}).get(scenario, n))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def venv_python(name: str) -> Path:
    return TOOLS / name / "bin" / "python"


def ensure_venvs(needed: set[str]) -> None:
    for name in sorted(needed):
        py = venv_python(name)
        marker = TOOLS / name / ".peers-installed"
        if marker.exists():
            continue
        log(f"creating {TOOLS / name} and installing {' '.join(VENVS[name])}")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(TOOLS / name)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *VENVS[name]], check=True)
        marker.write_text("ok\n")


def versions(name: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for d in ['skunkqueue','celery','kombu','rq','huey','dramatiq','arq','redis','hiredis']:\n"
        "    try: out[d] = m.version(d)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([str(venv_python(name)), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


# -- redis-server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit(
                "redis-server not found on PATH (Debian: apt-get install redis-server)"
            )
        self.dir = tempfile.mkdtemp(prefix="peers-redis-")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "redis.log"), "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--databases",
                "16",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.cmd("PING") == "PONG":
                    break
            except OSError:
                pass
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        self.version = self.cmd("INFO", "server")
        self.version = next(
            (
                line.split(":", 1)[1]
                for line in self.version.splitlines()
                if line.startswith("redis_version:")
            ),
            "?",
        )

    def cmd(self, *args: str) -> str:
        """A tiny RESP client, so the harness needs no redis-py of its own."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            s.sendall(out.encode())
            f = s.makefile("rb")
            line = f.readline().decode().rstrip("\r\n")
            if line.startswith("$"):
                size = int(line[1:])
                return "" if size < 0 else f.read(size + 2)[:-2].decode()
            if line.startswith("-"):
                raise RuntimeError(line)
            return line[1:]

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- running -----------------------------------------------------------------------------


class Stores:
    """The library's redis-server, the stamps' redis-server, and a temp dir for SQLite files."""

    def __init__(self) -> None:
        self.redis = RedisServer()
        try:
            self.stamps = RedisServer()
        except BaseException:
            self.redis.stop()
            raise
        self.sqlite_dir = tempfile.mkdtemp(prefix="peers-sqlite-")

    def url(self, lib: dict[str, Any], db: int = 0) -> str:
        if store(lib) == "sqlite":
            path = os.path.join(self.sqlite_dir, f"{lib['name'].replace(' ', '_')}.db")
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)
            return f"sqlite:///{path}"
        return self.redis.url(db)

    def flush(self) -> None:
        self.redis.cmd("FLUSHALL")
        self.stamps.cmd("FLUSHALL")

    def stop(self) -> None:
        self.redis.stop()
        self.stamps.stop()
        shutil.rmtree(self.sqlite_dir, ignore_errors=True)


def start_adapter(
    stores: Stores, lib: dict[str, Any], scenario: str, sizes: dict[str, Any], db: int = 0
) -> subprocess.Popen:
    url, stamp_url = stores.url(lib, db), stores.stamps.url(db)
    argv = [
        str(venv_python(lib["venv"])),
        str(HERE / lib["adapter"]),
        scenario,
        "--url",
        url,
        "--stamp-url",
        stamp_url,
        "--n",
        str(job_count(lib, scenario, sizes)) if scenario != "cron" else "0",
        "--spread",
        str(sizes["spread"]),
        "--duration",
        str(sizes["cron_s"]),
        *lib["scenarios"][scenario],
    ]
    env = dict(os.environ, PEER_URL=url, PEER_STAMP_URL=stamp_url)
    return subprocess.Popen(
        argv,
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )


def finish_adapter(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as e:
        # Timeout or Ctrl-C: SIGTERM lets the adapter stop its workers, then SIGKILL.
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        return {"error": f"timed out after {timeout} s", "stderr": stderr[-2000:]}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {
            "error": f"exit {proc.returncode}",
            "stderr": stderr[-3000:],
            "stdout": stdout[-1000:],
        }
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.monotonic() - started, 2)
    return result


def run_one(
    stores: Stores, lib: dict[str, Any], scenario: str, sizes: dict[str, Any], timeout: float
) -> dict[str, Any]:
    stores.flush()
    try:
        return finish_adapter(start_adapter(stores, lib, scenario, sizes), timeout)
    finally:
        stores.flush()


def run_cron(
    stores: Stores, libs: list[dict[str, Any]], sizes: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every library with cron at once, each in its own Redis database: one tick a minute
    costs next to nothing, and running them side by side exposes them to the same noise."""
    stores.flush()
    cron_libs = [lib for lib in libs if "cron" in lib["scenarios"]]
    procs = [start_adapter(stores, lib, "cron", sizes, db=i + 1) for i, lib in enumerate(cron_libs)]
    out = []
    try:
        for lib, proc in zip(cron_libs, procs, strict=True):
            out.append({"lib": lib["name"], "result": finish_adapter(proc, sizes["cron_s"] + 120)})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        stores.flush()
    return out


def redis_benchmark(server: RedisServer, requests: int) -> dict[str, Any]:
    """redis-benchmark on the libraries' server: LPUSH and LPOP, 1 client (what a single
    unpipelined producer could reach) and 50 clients (the server's own limit here)."""
    binary = shutil.which("redis-benchmark")
    if not binary:
        return {"error": "redis-benchmark not found (Debian: redis-tools)"}
    out: dict[str, Any] = {}
    for clients in (1, 50):
        proc = subprocess.run(
            [
                binary,
                "-h",
                "127.0.0.1",
                "-p",
                str(server.port),
                "-q",
                "--csv",
                "-n",
                str(requests),
                "-c",
                str(clients),
                "-t",
                "lpush,lpop",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        for line in proc.stdout.splitlines()[1:]:
            cells = [c.strip('"') for c in line.split(",")]
            out[f"{cells[0]} {clients} client{'s' if clients > 1 else ''}"] = float(cells[1])
    server.cmd("FLUSHALL")
    return out


# -- summaries ---------------------------------------------------------------------------


def headline(scenario: str, r: dict[str, Any]) -> float | None:
    if "error" in r:
        return None
    if scenario == "delayed":
        return r["p99_ms"]
    if scenario == "drain":
        return r["per_s_first_to_last"]
    return r["per_s"]


def median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(raw: list[dict[str, Any]], libs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {st: {} for st in STORES}
    for st in STORES:
        for scenario in ROUND_SCENARIOS:
            rows = {}
            for lib in libs:
                if store(lib) != st or scenario not in lib["scenarios"]:
                    continue
                runs = [r for r in raw if r["lib"] == lib["name"] and r["scenario"] == scenario]
                if not runs:
                    continue
                good = [r["result"] for r in runs if "error" not in r["result"]]
                vals = [headline(scenario, g) for g in good]
                ratios = []
                for r in runs:
                    ref = next(
                        (
                            x
                            for x in raw
                            if x["round"] == r["round"]
                            and x["scenario"] == scenario
                            and x["lib"] == REFERENCE[st]
                        ),
                        None,
                    )
                    a = headline(scenario, r["result"])
                    b = ref and headline(scenario, ref["result"])
                    if a is not None and b:
                        ratios.append(a / b)
                row: dict[str, Any] = {
                    "n": good[0]["jobs"] if good else None,
                    "runs": len(runs),
                    "ok": len(good),
                    "errors": [r["result"]["error"] for r in runs if "error" in r["result"]],
                }
                if vals:
                    row.update(median=statistics.median(vals), min=min(vals), max=max(vals))
                if ratios:
                    row["ratio_median"] = statistics.median(ratios)
                if scenario == "delayed" and good:
                    for key in ("p50_ms", "p99_ms", "max_ms"):
                        row[key] = statistics.median(g[key] for g in good)
                    row["early_worst"] = max(g["early"] for g in good)
                if scenario == "drain" and good:
                    row["per_s_from_start"] = statistics.median(g["per_s"] for g in good)
                    row["startup_s"] = statistics.median(g["startup_s"] for g in good)
                    mem = [g["memory"] for g in good if g.get("memory")]
                    if mem:
                        row["pss_mib"] = statistics.median(m["pss_mib"] for m in mem)
                        row["pss_min"] = min(m["pss_mib"] for m in mem)
                        row["pss_max"] = max(m["pss_mib"] for m in mem)
                        row["processes"] = max(m["processes"] for m in mem)
                if scenario in ("enqueue", "drain") and good:
                    cmds = [g["commands"] for g in good if g.get("commands")]
                    if cmds:
                        row["commands_per_job"] = statistics.median(c["per_job"] for c in cmds)
                        row["scripts_per_job"] = statistics.median(
                            c["scripts_per_job"] for c in cmds
                        )
                        row["server_cpu_us_per_job"] = statistics.median(
                            c["server_cpu_us_per_job"] for c in cmds
                        )
                        row["top_commands"] = {
                            name: round(calls / cmds[-1]["total"] * cmds[-1]["per_job"], 2)
                            for name, calls in list(cmds[-1]["by_command"].items())[:6]
                        }
                rows[lib["name"]] = row
            out[st][scenario] = rows
    return out


def summarize_cron(cron: list[dict[str, Any]]) -> dict[str, Any]:
    return {c["lib"]: c["result"] for c in cron}


def summarize_bench(bench: list[dict[str, Any]]) -> dict[str, Any]:
    keys = sorted({k for b in bench for k in b if k != "error"})
    return {
        k: {
            "median": statistics.median(b[k] for b in bench if k in b),
            "min": min(b[k] for b in bench if k in b),
            "max": max(b[k] for b in bench if k in b),
        }
        for k in keys
    }


# -- output ------------------------------------------------------------------------------


def fmt_rate(row: dict[str, Any]) -> str:
    if "median" not in row:
        return "failed: " + "; ".join(row["errors"])[:80]
    return f"{row['median']:,.0f} ({row['min']:,.0f} – {row['max']:,.0f})"


def fmt_ratio(row: dict[str, Any]) -> str:
    return f"{row['ratio_median']:.2f}x" if "ratio_median" in row else "–"


COMMAND_COLUMNS = ["Redis commands per job", "Redis CPU µs per job"]


def table_head(columns: list[str], with_commands: bool = False) -> list[str]:
    columns = columns + (COMMAND_COLUMNS if with_commands else [])
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def enqueue_table(rows: dict[str, Any], with_commands: bool) -> list[str]:
    lines = table_head(["library", "jobs/s", "ratio to SkunkQueue fire()"], with_commands)
    for name, row in rows.items():
        line = f"| {name} | {fmt_rate(row)} | {fmt_ratio(row)} |"
        if with_commands:
            line += f" {commands_cells(row)} |"
        lines.append(line)
    return lines


def commands_cells(row: dict[str, Any]) -> str:
    if "commands_per_job" not in row:
        return "– | –"
    return f"{row['commands_per_job']:g} | {row['server_cpu_us_per_job']:.0f}"


def drain_table(rows: dict[str, Any], with_commands: bool) -> list[str]:
    columns = [
        "library",
        "N",
        "jobs/s, first to last start",
        "ratio to SkunkQueue",
        "jobs/s from worker start",
        "start-up s",
        "worker PSS MiB (processes)",
    ]
    lines = table_head(columns, with_commands)
    for name, row in rows.items():
        if "median" not in row:
            lines.append(
                f"| {name} | | {fmt_rate(row)} | | | | |" + (" | |" if with_commands else "")
            )
            continue
        mem = (
            f"{row['pss_mib']:.1f} ({row['pss_min']:.1f} – {row['pss_max']:.1f}; "
            f"{row['processes']})"
            if "pss_mib" in row
            else "–"
        )
        line = (
            f"| {name} | {row['n']:,} | {fmt_rate(row)} | {fmt_ratio(row)} | "
            f"{row['per_s_from_start']:,.0f} | {row['startup_s']:.2f} | {mem} |"
        )
        if with_commands:
            line += f" {commands_cells(row)} |"
        lines.append(line)
    return lines


def delayed_table(rows: dict[str, Any]) -> list[str]:
    lines = table_head(
        ["library", "p50", "p99 (min – max over rounds)", "max", "early starts (worst round)"]
    )
    for name, row in rows.items():
        if "median" not in row:
            lines.append(f"| {name} | {fmt_rate(row)} | | | |")
            continue
        lines.append(
            f"| {name} | {row['p50_ms']:.1f} | {row['median']:.1f} ({row['min']:.1f} – "
            f"{row['max']:.1f}) | {row['max_ms']:.1f} | {row['early_worst']} |"
        )
    return lines


def is_peer(name: str) -> bool:
    return not name.startswith(("skunkqueue", "redis-py"))


def goals_table(red: dict[str, Any]) -> list[str]:
    """Issue 6's goals for SkunkQueue on Redis, judged from this run's medians."""

    def best(rows: dict[str, Any], field: str, pick: Callable[..., Any]) -> tuple[str, Any]:
        found = [(n, r[field]) for n, r in rows.items() if is_peer(n) and r.get(field)]
        return pick(found, key=lambda item: item[1]) if found else ("–", None)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = table_head(["goal (issue 6)", "this run", ""])
    ours = red["drain"].get("skunkqueue", {})
    peer, rate = best(red["drain"], "median", max)
    if ours.get("median") and rate:
        ratio = ours["median"] / rate
        lines.append(
            f"| drain >= 1.5x the fastest peer, holding leases and storing results | "
            f"{ours['median']:,.0f} jobs/s; fastest peer {peer} {rate:,.0f} ({ratio:.2f}x) | "
            f"{verdict(ratio >= 1.5)} |"
        )
    ours = red["enqueue"].get("skunkqueue", {})
    peer, rate = best(red["enqueue"], "median", max)
    if ours.get("median") and rate:
        ratio = ours["median"] / rate
        lines.append(
            f"| plain `fire()` >= the fastest peer's enqueue | {ours['median']:,.0f} jobs/s; "
            f"fastest peer {peer} {rate:,.0f} ({ratio:.2f}x) | {verdict(ratio >= 1)} |"
        )
    ours = red["delayed"].get("skunkqueue", {})
    if ours.get("median") is not None:
        ok = ours["median"] <= 10 and ours["early_worst"] == 0
        lines.append(
            f"| delayed-job p99 <= 10 ms, no job early | p99 {ours['median']:.1f} ms, "
            f"{ours['early_worst']} early | {verdict(ok)} |"
        )
    ours = red["drain"].get("skunkqueue", {})
    peer, pss = best(red["drain"], "pss_mib", min)
    if ours.get("pss_mib") and pss:
        lines.append(
            f"| worker memory no higher than the leanest peer's | {ours['pss_mib']:.1f} MiB "
            f"({ours['processes']} processes); leanest peer {peer} {pss:.1f} MiB "
            f"({red['drain'][peer]['processes']}) | {verdict(ours['pss_mib'] <= pss)} |"
        )
    return lines


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    sizes = meta["sizes"]
    red = summary["redis"]
    lines = [
        f"Run {meta['date']} on {meta['machine']}, Redis {meta['redis']}; {meta['rounds']} "
        f"interleaved round(s), {meta['wall_s']:.0f} s in all. Median (min – max) across "
        "rounds; ratio = median over rounds of (library / SkunkQueue) within a round.",
        "",
    ]
    goals = goals_table(red)
    if len(goals) > 2:
        lines += ["### The goals, judged from this run (ratios of the medians)", "", *goals, ""]
    if red["enqueue"]:
        lines += [
            f"### Enqueue: one producer, {sizes['enqueue']:,} no-op jobs, Redis",
            "",
            *enqueue_table(red["enqueue"], with_commands=True),
            "",
        ]
    if red["drain"]:
        lines += [
            "### Drain: queued no-op jobs, 2 worker processes, Redis "
            f"(N {sizes['drain']:,} unless the row says otherwise)",
            "",
            *drain_table(red["drain"], with_commands=True),
            "",
        ]
    if red["delayed"]:
        lines += [
            f"### Delayed jobs: {sizes['delayed']} jobs, etas over {sizes['spread']:g} s, "
            "Redis (start − eta, ms)",
            "",
            *delayed_table(red["delayed"]),
            "",
        ]
    cron = summary.get("cron") or {}
    if cron:
        lines += [
            f"### Cron: a once-a-minute job ('* * * * *'), all libraries side by side for "
            f"{sizes['cron_s']:g} s, Redis (start − minute boundary, ms)",
            "",
            "| library | ticks seen / expected | p50 | max | missing | duplicates | early |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in cron.items():
            if "error" in c:
                lines.append(f"| {name} | failed: {c['error']} | | | | | |")
                continue
            p50 = "–" if c["p50_ms"] is None else f"{c['p50_ms']:.1f}"
            mx = "–" if c["max_ms"] is None else f"{c['max_ms']:.1f}"
            lines.append(
                f"| {name} | {c['ticks']} / {c['expected_ticks']} | {p50} | {mx} | "
                f"{c['missing']} | {c['duplicates']} | {c['early']} |"
            )
        lines.append("")
    bench = summary.get("redis_benchmark") or {}
    if bench:
        lines += [
            "### Redis itself: `redis-benchmark` on the same server (requests/s)",
            "",
            "| test | requests/s |",
            "|---|---|",
            *(f"| {k} | {fmt_rate(v)} |" for k, v in bench.items()),
            "",
        ]
    commands = {name: row for name, row in red["drain"].items() if row.get("top_commands")}
    if commands:
        lines += [
            "### Redis commands per drained job, by command (last round; commands run "
            "inside Lua scripts and MULTI blocks count)",
            "",
            "| library | per job | of which scripts (EVALSHA) | most frequent commands per job |",
            "|---|---|---|---|",
        ]
        for name, row in commands.items():
            top = ", ".join(f"{c} {v:g}" for c, v in row["top_commands"].items())
            lines.append(
                f"| {name} | {row['commands_per_job']:g} | {row['scripts_per_job']:g} | {top} |"
            )
        lines.append("")
    sql = summary["sqlite"]
    if any(sql[scenario] for scenario in ROUND_SCENARIOS):
        lines += [
            "## SQLite: SkunkQueue's embedded default next to Huey's SqliteHuey",
            "",
            f"#### Enqueue, {sizes['enqueue']:,} jobs",
            "",
            *enqueue_table(sql["enqueue"], with_commands=False),
            "",
            "#### Drain, 2 worker processes",
            "",
            *drain_table(sql["drain"], with_commands=False),
            "",
            f"#### Delayed jobs, {sizes['delayed']} over {sizes['spread']:g} s (ms)",
            "",
            *delayed_table(sql["delayed"]),
            "",
        ]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    return "\n".join(lines)


CHART = r"""
import json, sys, matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, MaxNLocator
s = json.loads(sys.stdin.read())
panels = [
    ('redis', 'enqueue', 'median', 'Enqueue, one producer, one job per call (Redis)', 'jobs/s', False),
    ('redis', 'drain', 'median', 'Drain, 2 workers (Redis)', 'jobs/s, first to last start', False),
    ('redis', 'delayed', 'median', 'Delayed jobs: p99 lateness (Redis)', 'ms (log scale)', True),
    ('redis', 'drain', 'pss_mib', 'Worker memory after the drain', 'PSS MiB, all worker processes', False),
    ('redis', 'drain', 'commands_per_job', 'Redis commands per drained job', 'commands (incl. in scripts)', False),
    ('sqlite', 'drain', 'median', 'SQLite: drain, 2 workers', 'jobs/s, first to last start', False),
]
fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
for ax, (st, key, field, title, unit, log) in zip(axes.flat, panels):
    rows = [(n, r) for n, r in s[st][key].items() if r.get(field) is not None
            and not (key == 'enqueue' and 'fire_many' in n)]
    names = [n for n, _ in rows]
    med = [r[field] for _, r in rows]
    err = None
    if field == 'median':
        err = [[r['median'] - r['min'] for _, r in rows], [r['max'] - r['median'] for _, r in rows]]
    elif field == 'pss_mib':
        err = [[r['pss_mib'] - r['pss_min'] for _, r in rows], [r['pss_max'] - r['pss_mib'] for _, r in rows]]
    colors = ['#d62728' if n.startswith('skunkqueue') else '#7f7f7f' if 'ceiling' in n else '#1f77b4' for n in names]
    ax.barh(names, med, xerr=err, color=colors)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(unit)
    if log:
        ax.set_xscale('log')
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f'{x:,.0f}'))
    ends = [v + (err[1][y] if err else 0) for y, v in enumerate(med)]
    for y, v in enumerate(med):
        ax.annotate(f'{v:,.0f}' if v >= 10 else f'{v:.1f}', (ends[y], y), xytext=(3, 0),
                    textcoords='offset points', va='center', fontsize=8)
    ax.set_xlim(right=max(ends) * (3 if log else 1.15))
fig.suptitle(sys.argv[2], fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
"""


def chart(summary: dict[str, Any], path: Path, caption: str) -> bool:
    proc = subprocess.run(
        [str(venv_python("peers-main")), "-c", CHART, str(path), caption],
        input=json.dumps(summary),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        log(f"chart failed: {proc.stderr[-500:]}")
    return proc.returncode == 0


RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


def publish(readme: Path, md: str) -> bool:
    """Put the tables between the README's result markers (a full run's results only)."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        return False
    head, rest = text.split(RESULTS_START, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    readme.write_text(f"{head}{RESULTS_START}\n{md.rstrip()}\n{RESULTS_END}{tail}")
    return True


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return f"{platform.platform()}, {os.cpu_count()} CPUs ({model})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny N, 1 round: a quick check")
    ap.add_argument("--only", default="", help="comma-separated library names (adapter stems)")
    ap.add_argument(
        "--scenarios",
        default="enqueue,drain,delayed,cron",
        help="comma-separated subset of enqueue,drain,delayed,cron",
    )
    ap.add_argument("--out", default=str(DOCS))
    ap.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rebuild results.md, results.png and the README section from a saved run",
    )
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_outputs(Path(args.out), "results", saved["meta"], saved["summary"], None)
        return 0
    if args.smoke:
        sizes = {"enqueue": 200, "drain": 200, "delayed": 30, "spread": 1.0, "cron_s": 80.0}
        rounds, bench_requests = 1, 2000
    else:
        sizes = {"enqueue": 10000, "drain": 10000, "delayed": 300, "spread": 3.0, "cron_s": 200.0}
        rounds, bench_requests = args.rounds, 50000
    libs = LIBS
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")} | {"skunkqueue"}
        libs = [
            lib
            for lib in LIBS
            if lib["adapter"][len("adapter_") : -3] in wanted or lib["name"] in wanted
        ]
    scenarios = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    unknown = scenarios - {*ROUND_SCENARIOS, "cron"}
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    libs = [lib for lib in libs if (HERE / lib["adapter"]).exists()]
    ensure_venvs({lib["venv"] for lib in libs})
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "rounds": rounds,
        "sizes": sizes,
        "smoke": args.smoke,
        "versions": {
            **versions("peers-main"),
            **{
                f"arq env: {k}": v
                for k, v in (
                    versions("peers-arq") if any(lib["venv"] == "peers-arq" for lib in libs) else {}
                ).items()
                if k in ("arq", "redis")
            },
        },
    }
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    stores = Stores()
    meta["redis"] = stores.redis.version
    log(
        f"redis-server {stores.redis.version} on port {stores.redis.port} for the libraries, "
        f"port {stores.stamps.port} for the start records"
    )
    raw: list[dict[str, Any]] = []
    bench: list[dict[str, Any]] = []
    cron: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for rnd in range(1, rounds + 1 if scenarios - {"cron"} else 1):
            b = redis_benchmark(stores.redis, bench_requests)
            bench.append(b)
            log(f"round {rnd} redis-benchmark {b}")
            for scenario in ROUND_SCENARIOS:
                for lib in libs:
                    if scenario not in scenarios or scenario not in lib["scenarios"]:
                        continue
                    t = time.monotonic()
                    result = run_one(
                        stores, lib, scenario, sizes, timeout=60 if args.smoke else 300
                    )
                    raw.append(
                        {"round": rnd, "lib": lib["name"], "scenario": scenario, "result": result}
                    )
                    h = headline(scenario, result)
                    shown = (
                        f"error: {result['error']} {result.get('stderr', '')[-300:]}"
                        if h is None
                        else f"{h:,.1f} {'ms p99' if scenario == 'delayed' else 'jobs/s'}"
                    )
                    log(
                        f"round {rnd} {scenario:8} {lib['name']:32} {shown} "
                        f"({time.monotonic() - t:.1f} s)"
                    )
        if "cron" in scenarios:
            log(f"cron: every library with cron side by side for {sizes['cron_s']:g} s")
            cron = run_cron(stores, libs, sizes)
            for c in cron:
                log(f"cron {c['lib']:32} {c['result']}")
    except KeyboardInterrupt:
        log("interrupted: writing what there is")
    finally:
        stores.stop()
        meta["wall_s"] = time.monotonic() - started
        log(f"redis-servers stopped; {meta['wall_s']:.0f} s of runs")
    summary = summarize(raw, libs)
    summary["cron"] = summarize_cron(cron)
    summary["redis_benchmark"] = summarize_bench(bench)
    stem = "smoke" if args.smoke else "results"
    write_outputs(Path(args.out), stem, meta, summary, {"raw": raw, "cron": cron})
    return 0


def write_outputs(
    out: Path,
    stem: str,
    meta: dict[str, Any],
    summary: dict[str, Any],
    runs: dict[str, Any] | None,
) -> None:
    """results.json (when there are new runs), results.md, results.png, README section."""
    out.mkdir(parents=True, exist_ok=True)
    if runs is not None:
        (out / f"{stem}.json").write_text(
            json.dumps({"meta": meta, "summary": summary, **runs}, indent=1) + "\n"
        )
    md = markdown(meta, summary)
    (out / f"{stem}.md").write_text(md)
    caption = f"{meta['date']}, {meta['machine']}, Redis {meta['redis']}, {meta['rounds']} round(s)"
    if chart(summary, out / f"{stem}.png", caption):
        log(f"wrote {out / (stem + '.png')}")
    print(md)
    log(f"wrote {out / (stem + '.md')}")
    if stem == "results" and publish(out / "README.md", md):
        log(f"updated the results in {out / 'README.md'}")


if __name__ == "__main__":
    sys.exit(main())
