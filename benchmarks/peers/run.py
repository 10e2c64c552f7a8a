"""Peer benchmark: SkunkQueue on Redis next to Python peers, same machine, same Redis, same run.

    python benchmarks/peers/run.py [--rounds 3] [--smoke] [--only rq,huey]

Creates (if missing) two virtualenvs, .tools/peers-main (celery rq huey dramatiq redis
hiredis matplotlib, and skunkqueue from this checkout) and .tools/peers-arq (arq, which
pins redis-py < 6); starts its own redis-server on a free loopback port; runs every
library's adapter (benchmarks/peers/adapter_*.py) in its own subprocess, in interleaved
rounds, FLUSHALL between runs; writes docs/peers/results.json, docs/peers/results.md
(and docs/peers/peers.png if matplotlib is there); stops redis-server by PID at the end.
"""

from __future__ import annotations

import argparse
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

# name, adapter, venv, scenario -> extra argv (None: the library lacks the scenario)
LIBS: list[dict[str, Any]] = [
    {
        "name": "redis-py ceiling",
        "adapter": "adapter_redis.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": []},
    },
    {
        "name": "skunkqueue",
        "adapter": "adapter_skunkqueue.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
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
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
    {
        "name": "rq SimpleWorker",
        "adapter": "adapter_rq.py",
        "venv": "peers-main",
        "scenarios": {"drain": ["--variant", "simple"], "delayed": ["--variant", "simple"]},
    },
    {
        "name": "huey",
        "adapter": "adapter_huey.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
    {
        "name": "celery",
        "adapter": "adapter_celery.py",
        "venv": "peers-main",
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
    {
        "name": "celery solo",
        "adapter": "adapter_celery.py",
        "venv": "peers-main",
        "scenarios": {"drain": ["--variant", "solo"]},
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
        "scenarios": {"enqueue": [], "drain": [], "delayed": []},
    },
]
SCENARIOS = ["enqueue", "drain", "delayed"]
REFERENCE = {"enqueue": "skunkqueue", "drain": "skunkqueue", "delayed": "skunkqueue"}


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


def run_one(
    server: RedisServer, lib: dict[str, Any], scenario: str, sizes: dict[str, Any], timeout: float
) -> dict[str, Any]:
    server.cmd("FLUSHALL")
    n = sizes["delayed"] if scenario == "delayed" else sizes[scenario]
    argv = [
        str(venv_python(lib["venv"])),
        str(HERE / lib["adapter"]),
        scenario,
        "--url",
        server.url(0),
        "--stamp-url",
        server.url(15),
        "--n",
        str(n),
        "--spread",
        str(sizes["spread"]),
        *lib["scenarios"][scenario],
    ]
    started = time.monotonic()
    env = dict(os.environ, PEER_URL=server.url(0), PEER_STAMP_URL=server.url(15))
    proc = subprocess.Popen(
        argv,
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
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
    finally:
        server.cmd("FLUSHALL")
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


def headline(scenario: str, r: dict[str, Any]) -> float | None:
    if "error" in r:
        return None
    return r["p99_ms"] if scenario == "delayed" else r["per_s"]


def summarize(raw: list[dict[str, Any]], libs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        rows = {}
        for lib in libs:
            if scenario not in lib["scenarios"]:
                continue
            runs = [r for r in raw if r["lib"] == lib["name"] and r["scenario"] == scenario]
            vals = [headline(scenario, r["result"]) for r in runs]
            ok = [v for v in vals if v is not None]
            ratios = []
            for r in runs:
                ref = next(
                    (
                        x
                        for x in raw
                        if x["round"] == r["round"]
                        and x["scenario"] == scenario
                        and x["lib"] == REFERENCE[scenario]
                    ),
                    None,
                )
                a, b = headline(scenario, r["result"]), ref and headline(scenario, ref["result"])
                if a is not None and b:
                    ratios.append(a / b)
            row: dict[str, Any] = {
                "runs": len(runs),
                "ok": len(ok),
                "errors": [r["result"]["error"] for r in runs if "error" in r["result"]],
            }
            if ok:
                row.update(median=statistics.median(ok), min=min(ok), max=max(ok))
            if ratios:
                row["ratio_median"] = statistics.median(ratios)
            if scenario == "delayed":
                good = [r["result"] for r in runs if "error" not in r["result"]]
                for key in ("p50_ms", "p99_ms", "max_ms"):
                    if good:
                        row[key] = statistics.median(g[key] for g in good)
                row["early_worst"] = max((g["early"] for g in good), default=None)
            if scenario == "drain":
                good = [r["result"] for r in runs if "error" not in r["result"]]
                if good:
                    row["per_s_first_to_last"] = statistics.median(
                        g["per_s_first_to_last"] for g in good
                    )
                    row["startup_s"] = statistics.median(g["startup_s"] for g in good)
            rows[lib["name"]] = row
        out[scenario] = rows
    return out


def fmt_rate(row: dict[str, Any]) -> str:
    if "median" not in row:
        return "failed: " + "; ".join(row["errors"])[:80]
    return f"{row['median']:,.0f} ({row['min']:,.0f} – {row['max']:,.0f})"


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    rounds = meta["rounds"]
    lines = [
        f"Run {meta['date']} on {meta['machine']}, Redis {meta['redis']}, "
        f"{rounds} round(s), sizes {meta['sizes']}. Median (min – max) across rounds; "
        "ratio = median over rounds of (library / SkunkQueue) in the same round.",
        "",
        f"### Enqueue: one producer, {meta['sizes']['enqueue']:,} no-op jobs (jobs/s)",
        "",
        "| library | jobs/s | ratio to SkunkQueue fire() |",
        "|---|---|---|",
    ]
    for name, row in summary["enqueue"].items():
        ratio = f"{row['ratio_median']:.2f}x" if "ratio_median" in row else "–"
        lines.append(f"| {name} | {fmt_rate(row)} | {ratio} |")
    lines += [
        "",
        f"### Drain: {meta['sizes']['drain']:,} queued no-op jobs, 2 worker processes "
        "(jobs/s from worker start to the last job's start record)",
        "",
        "| library | jobs/s from worker start | ratio to SkunkQueue | jobs/s first to last start | startup s |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["drain"].items():
        ratio = f"{row['ratio_median']:.2f}x" if "ratio_median" in row else "–"
        extra = (
            f"{row['per_s_first_to_last']:,.0f} | {row['startup_s']:.2f}"
            if "per_s_first_to_last" in row
            else "– | –"
        )
        lines.append(f"| {name} | {fmt_rate(row)} | {ratio} | {extra} |")
    lines += [
        "",
        f"### Delayed jobs: {meta['sizes']['delayed']} jobs, etas over "
        f"{meta['sizes']['spread']:g} s (start − eta, ms)",
        "",
        "| library | p50 | p99 (min – max over rounds) | max | early starts (worst round) |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["delayed"].items():
        if "median" not in row:
            lines.append(f"| {name} | {fmt_rate(row)} | | | |")
            continue
        lines.append(
            f"| {name} | {row['p50_ms']:.1f} | {row['median']:.1f} ({row['min']:.1f} – "
            f"{row['max']:.1f}) | {row['max_ms']:.1f} | {row['early_worst']} |"
        )
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    return "\n".join(lines)


def chart(summary: dict[str, Any], path: Path) -> bool:
    code = f"""
import json, matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
s = json.loads({json.dumps(json.dumps(summary))})
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
for ax, (key, title, unit) in zip(axes, [('enqueue', 'Enqueue, one producer', 'jobs/s'),
        ('drain', 'Drain, 2 worker processes', 'jobs/s'),
        ('delayed', 'Delayed jobs: p99 lateness', 'ms (symlog)')]):
    rows = [(n, r) for n, r in s[key].items() if 'median' in r]
    names = [n for n, _ in rows]
    med = [r['median'] for _, r in rows]
    err = [[r['median'] - r['min'] for _, r in rows], [r['max'] - r['median'] for _, r in rows]]
    colors = ['#d62728' if n.startswith('skunkqueue') else '#7f7f7f' if 'ceiling' in n else '#1f77b4' for n in names]
    ax.barh(names, med, xerr=err, color=colors)
    ax.invert_yaxis()
    ax.set_title(title); ax.set_xlabel(unit)
    if key == 'delayed': ax.set_xscale('symlog', linthresh=1)
fig.tight_layout()
fig.savefig({str(path)!r}, dpi=110)
"""
    proc = subprocess.run(
        [str(venv_python("peers-main")), "-c", code], capture_output=True, text=True
    )
    if proc.returncode != 0:
        log(f"chart failed: {proc.stderr[-500:]}")
    return proc.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny N, 1 round: a quick check")
    ap.add_argument("--only", default="", help="comma-separated library names (adapter stems)")
    ap.add_argument("--out", default=str(DOCS))
    args = ap.parse_args()
    if args.smoke:
        sizes = {"enqueue": 200, "drain": 200, "delayed": 30, "spread": 1.0}
        rounds = 1
    else:
        sizes = {"enqueue": 10000, "drain": 10000, "delayed": 300, "spread": 3.0}
        rounds = args.rounds
    libs = LIBS
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")} | {"skunkqueue"}
        libs = [
            lib
            for lib in LIBS
            if lib["adapter"][len("adapter_") : -3] in wanted or lib["name"] in wanted
        ]
    libs = [lib for lib in libs if (HERE / lib["adapter"]).exists()]
    ensure_venvs({lib["venv"] for lib in libs})
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "rounds": rounds,
        "sizes": sizes,
        "smoke": args.smoke,
        "versions": {
            **versions("peers-main"),
            **{
                f"arq env: {k}": v
                for k, v in versions("peers-arq").items()
                if k in ("arq", "redis")
            },
        },
    }
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    server = RedisServer()
    meta["redis"] = server.version
    log(f"redis-server {server.version} on port {server.port} (pid {server.popen.pid})")
    raw: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for rnd in range(1, rounds + 1):
            for scenario in SCENARIOS:
                for lib in libs:
                    if scenario not in lib["scenarios"]:
                        continue
                    t = time.monotonic()
                    result = run_one(
                        server, lib, scenario, sizes, timeout=60 if args.smoke else 300
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
                        f"round {rnd} {scenario:8} {lib['name']:28} {shown} "
                        f"({time.monotonic() - t:.1f} s)"
                    )
    except KeyboardInterrupt:
        log("interrupted: writing what there is")
    finally:
        server.stop()
        log(f"redis-server stopped; {time.monotonic() - started:.0f} s of runs")
    summary = summarize(raw, libs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else "results"
    (out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "raw": raw}, indent=1) + "\n"
    )
    md = markdown(meta, summary)
    (out / f"{stem}.md").write_text(md)
    if chart(summary, out / f"{stem}.png"):
        log(f"wrote {out / (stem + '.png')}")
    print(md)
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
