"""Worker pool before/after: two source trees of skunkqueue, one run, interleaved rounds.

    python3 benchmarks/bench_pool.py --before 6d0baf8 [--after .] [--rounds 15] [--jobs 10000]
                                     [--smoke] [--write] [--out FILE.json] [--python PY]

Measures what the peer benchmark (benchmarks/peers/run.py) publishes for SkunkQueue's
2-worker pool, for two trees side by side: the steady drain rate of N queued no-op jobs
(first start record to last) on Redis and on SQLite, and the PSS of every process the
worker command started, read right after the drain. ``--before`` and ``--after`` are each
a git commit (exported with ``git archive`` into a temp dir, removed at the end) or a
directory holding a checkout (``--after`` defaults to ``.``, the work tree with its
uncommitted changes). Each run's pool is ``python -m skunkqueue work -r bench bench``,
the peer benchmark's command, with each tree's defaults, started with PYTHONPATH pointing
at that tree; a probe module imported by the pool records the skunkqueue it imported,
and a run from the wrong tree fails the benchmark. Also given per run: the pool's CPU
time per job, and the share of the machine's CPU that other processes used meanwhile.

The harness is the peer benchmark's own: run.py's redis-servers (one for the store, one
for the start records), its fresh SQLite file per run and its subprocess handling;
common.py's drain scenario (start records, PSS of the process tree) and
adapter_skunkqueue.py's tasks, enqueue and pool command, imported, not copied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
REPO = BENCH.parent
README = BENCH / "README.md"
MARK_START = "<!-- pool-before-after:start -->"
MARK_END = "<!-- pool-before-after:end -->"
STORES = ("redis", "sqlite")
TREES = ("before", "after")

# Imported by the pool's supervisor (one more `--import`): records which skunkqueue the
# pool runs. It imports nothing the pool has not imported already.
PROBE_MODULE = "bench_pool_probe"
PROBE_SOURCE = """\
import os
import skunkqueue

with open(os.environ["BENCH_POOL_PROBE_OUT"], "a") as _f:
    _f.write(f"{os.getpid()} {os.path.realpath(skunkqueue.__file__)}\\n")
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the child: one drain, run with the tree's PYTHONPATH ---------------------------------


def child() -> None:
    """`bench_pool.py drain --url ... --stamp-url ... --n N`: run.py's adapter protocol."""
    sys.path.insert(0, str(PEERS))
    import common

    args = common.parse_args()
    import adapter_skunkqueue as sq  # its `from skunkqueue import ...` resolves on PYTHONPATH

    import skunkqueue

    pool = sq.skunq("work", "-r", *(["bench"] * args.workers)) + ["--import", PROBE_MODULE]
    result = common.scenario_drain(sq.make_enqueue_batched(500), [pool], args.n)
    # The pool is this process's only child, stopped and reaped by now: its CPU time (and
    # that of the workers its supervisor reaped), start-up and shutdown included.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["pool_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    result["producer_skunkqueue"] = os.path.realpath(skunkqueue.__file__)
    result["pool_argv"] = pool
    common.emit(result)


# -- trees -------------------------------------------------------------------------------


def git(*args: str, cwd: Path = REPO) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def prepare_tree(spec: str, role: str, tmp: Path) -> dict[str, Any]:
    """A directory holding the package skunkqueue/: the checkout ``spec`` names, or the
    commit ``spec`` exported (skunkqueue/ only) with git archive into ``tmp``."""
    if os.path.isdir(spec):
        path = Path(spec).resolve()
        if not (path / "skunkqueue" / "__init__.py").exists():
            path = Path(git("rev-parse", "--show-toplevel", cwd=path))
        if not (path / "skunkqueue" / "__init__.py").exists():
            raise SystemExit(f"--{role} {spec}: no skunkqueue/ package there")
        try:
            head = git("rev-parse", "--short", "HEAD", cwd=path)
            dirty = git("status", "--porcelain", "--", "skunkqueue", cwd=path).splitlines()
            label = f"{path} (HEAD {head}" + (
                f", {len(dirty)} uncommitted change(s) in skunkqueue/)" if dirty else ", clean)"
            )
        except SystemExit:  # a plain directory, not a checkout
            head, dirty, label = None, [], f"{path} (not a git checkout)"
        return {
            "role": role,
            "spec": spec,
            "path": str(path),
            "commit": head,
            "uncommitted": len(dirty),
            "label": label,
        }
    sha = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    path = tmp / f"{role}-{sha[:10]}"
    path.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", sha, "skunkqueue"], cwd=REPO, stdout=subprocess.PIPE
    )
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(path, filter="data")
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    return {
        "role": role,
        "spec": spec,
        "path": str(path),
        "commit": sha[:10],
        "uncommitted": 0,
        "label": f"{sha[:10]} (git archive)",
    }


def pick_python(explicit: str | None, peers: Any) -> str:
    """The peer benchmark's virtualenv if it is there, else the test .venv, else create the
    former (run.py's ensure_venvs). Either has redis-py + hiredis + croniter."""
    if explicit:
        return explicit
    main_venv = peers.TOOLS / "peers-main"
    if (main_venv / ".peers-installed").exists():
        return str(peers.venv_python("peers-main"))
    local = REPO / ".venv" / "bin" / "python"
    if local.exists():
        ok = subprocess.run([str(local), "-c", "import redis, croniter"], capture_output=True)
        if ok.returncode == 0:
            return str(local)
    peers.ensure_venvs({"peers-main"})
    return str(peers.venv_python("peers-main"))


# -- one run -----------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pids: list[int]) -> dict[str, float]:
    """Machine CPU (/proc/stat) and what this harness used of it: itself, its reaped
    children (the child and the pool it reaped), its redis-servers."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    servers = 0
    for pid in server_pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            servers += int(fields[11]) + int(fields[12])  # utime, stime
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return {
        "wall": time.monotonic(),
        "busy": (user + nice + system + irq + softirq) / CLK_TCK,
        "steal": steal / CLK_TCK,
        "ours": own + servers / CLK_TCK,
    }


def machine_load(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU that others used during a run (other test suites, say), and the hypervisor's
    steal, in % of the machine's capacity over the run: a run to distrust when high."""
    capacity = (after["wall"] - before["wall"]) * (os.cpu_count() or 1)
    others = (after["busy"] - before["busy"]) - (after["ours"] - before["ours"])
    return {
        "others_cpu_pct": round(max(0.0, others) / capacity * 100, 1),
        "steal_pct": round((after["steal"] - before["steal"]) / capacity * 100, 1),
    }


def run_drain(
    peers: Any,
    stores: Any,
    tree: dict[str, Any],
    store: str,
    n: int,
    python: str,
    probe_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    url = stores.url({"name": f"pool-{tree['role']}", "store": store})  # fresh SQLite file
    stamp_url = stores.stamps.url(0)
    probe_out = probe_dir / f"probe-{tree['role']}-{store}.txt"
    with contextlib.suppress(FileNotFoundError):
        probe_out.unlink()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([tree["path"], str(probe_dir)]),
        PEER_URL=url,
        PEER_STAMP_URL=stamp_url,
        BENCH_POOL_PROBE_OUT=str(probe_out),
    )
    argv = [
        python,
        str(Path(__file__).resolve()),
        "drain",
        "--url",
        url,
        "--stamp-url",
        stamp_url,
        "--n",
        str(n),
    ]
    stores.flush()
    servers = [stores.redis.popen.pid, stores.stamps.popen.pid]
    try:
        cpu_before = cpu_snapshot(servers)
        proc = subprocess.Popen(
            argv,
            cwd=PEERS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        result = peers.finish_adapter(proc, timeout)
        result["machine"] = machine_load(cpu_before, cpu_snapshot(servers))
    finally:
        stores.flush()
    result["pool_skunkqueue"] = (
        sorted({line.split(" ", 1)[1] for line in probe_out.read_text().splitlines()})
        if probe_out.exists()
        else []
    )
    expected = os.path.realpath(os.path.join(tree["path"], "skunkqueue", "__init__.py"))
    if "error" not in result:
        imported = {*result["pool_skunkqueue"], result.get("producer_skunkqueue")}
        if imported != {expected}:
            raise SystemExit(
                f"{tree['role']} tree: imported {sorted(map(str, imported))}, expected {expected}"
            )
    return result


# -- summary -----------------------------------------------------------------------------

FIGURES = [
    # key, label, store, field; the goal (after / before of the medians) goes by field:
    # a drain rate >= 0.95x; PSS and CPU time are shown without one here.
    ("redis_per_s", "Redis drain, jobs/s (first to last start)", "redis", "per_s_first_to_last"),
    ("sqlite_per_s", "SQLite drain, jobs/s (first to last start)", "sqlite", "per_s_first_to_last"),
    ("redis_pss", "PSS MiB after the Redis drain (processes)", "redis", "pss_mib"),
    ("sqlite_pss", "PSS MiB after the SQLite drain (processes)", "sqlite", "pss_mib"),
    ("redis_cpu", "pool CPU µs per job, Redis (whole pool life)", "redis", "cpu_us_per_job"),
    ("sqlite_cpu", "pool CPU µs per job, SQLite (whole pool life)", "sqlite", "cpu_us_per_job"),
]


def value(run: dict[str, Any], field: str) -> float | None:
    r = run["result"]
    if "error" in r:
        return None
    if field == "pss_mib":
        return r["memory"]["pss_mib"]
    if field == "cpu_us_per_job":
        return r["pool_cpu_s"] / r["jobs"] * 1e6
    return r[field]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _, store, field in FIGURES:
        row: dict[str, Any] = {}
        for role in TREES:
            mine = [r for r in runs if r["tree"] == role and r["store"] == store]
            vals = [v for v in (value(r, field) for r in mine) if v is not None]
            row[role] = {
                "values": vals,
                "errors": len(mine) - len(vals),
                "median": statistics.median(vals) if vals else None,
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "processes": max(
                    (
                        r["result"]["memory"]["processes"]
                        for r in mine
                        if "error" not in r["result"]
                    ),
                    default=None,
                ),
            }
        paired = []
        for rnd in sorted({r["round"] for r in runs}):
            pair = {
                r["tree"]: value(r, field)
                for r in runs
                if r["round"] == rnd and r["store"] == store
            }
            if pair.get("before") and pair.get("after") is not None:
                paired.append(pair["after"] / pair["before"])
        b, a = row["before"]["median"], row["after"]["median"]
        row["ratio_of_medians"] = a / b if a is not None and b else None
        row["paired_ratios"] = paired
        if row["ratio_of_medians"] is None or field in ("cpu_us_per_job", "pss_mib"):
            row["verdict"] = None
        else:
            row["verdict"] = row["ratio_of_medians"] >= 0.95
        out[key] = row
    return out


def fmt_cell(cell: dict[str, Any], pss: bool) -> str:
    if cell["median"] is None:
        return f"failed ({cell['errors']} run(s))"
    if pss:
        text = f"{cell['median']:.1f} ({cell['min']:.1f} – {cell['max']:.1f}; {cell['processes']})"
    else:
        text = f"{cell['median']:,.0f} ({cell['min']:,.0f} – {cell['max']:,.0f})"
    return text + (f", {cell['errors']} failed" if cell["errors"] else "")


def markdown(meta: dict[str, Any], summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    trees = meta["trees"]
    lines = [
        f"Run {meta['date']} on {meta['machine']}, Redis {meta['redis']}, Python "
        f"{meta['python_version']}; {meta['rounds']} interleaved round(s) (the tree that goes "
        f"first alternates), {meta['jobs']:,} no-op jobs per drain, "
        f"{meta['wall_s']:.0f} s in all{' (smoke run)' if meta['smoke'] else ''}. "
        f"**before** = {trees['before']['label']}; **after** = {trees['after']['label']}. "
        "Median (min – max) over the rounds. "
        f"Processes outside the benchmark used {meta['others_cpu_pct']} of the machine's CPU "
        "during the runs (median (min – max); see the per-round table).",
        "",
        "| figure | before | after | after / before, medians | per round: median (min – max) "
        "| goal | |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, _, field in FIGURES:
        row = summary[key]
        pss = field == "pss_mib"
        ratio = row["ratio_of_medians"]
        ratio_text = "–" if ratio is None else f"{ratio:.3f}x"
        if pss and ratio is not None:
            ratio_text += f" ({row['after']['median'] - row['before']['median']:+.1f} MiB)"
        pr = row["paired_ratios"]
        paired = f"{statistics.median(pr):.3f}x ({min(pr):.3f} – {max(pr):.3f})" if pr else "–"
        # PSS has its goal against the peers (the leanest peer's PSS in the peer benchmark),
        # which this script does not run: it reports the difference only.
        goal = {"pss_mib": "vs the peers", "cpu_us_per_job": "–"}.get(field, ">= 0.95x")
        verdict = {None: "–", True: "met", False: "**not met**"}[row["verdict"]]
        lines.append(
            f"| {label} | {fmt_cell(row['before'], pss)} | {fmt_cell(row['after'], pss)} | "
            f"{ratio_text} | {paired} | {goal} | {verdict} |"
        )
    lines += [
        "",
        "Per round (in run order within each store). Others' CPU: what processes outside "
        "this benchmark used of the machine during each run, and the hypervisor's steal, in "
        f"% of its {os.cpu_count()}-CPU capacity (Redis run; SQLite run); rounds with a "
        "high share are the noisy ones.",
        "",
        "| round | tree | Redis jobs/s | SQLite jobs/s | PSS MiB Redis (processes) | "
        "PSS MiB SQLite (processes) | others' CPU % (steal %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rnd in range(1, meta["rounds"] + 1):
        for role in meta["order"][rnd - 1]:
            cells = [
                next(
                    (
                        r["result"]
                        for r in runs
                        if r["round"] == rnd and r["tree"] == role and r["store"] == store
                    ),
                    None,
                )
                for store in STORES
            ]
            ok = [r is not None and "error" not in r for r in cells]
            rates = [
                f"{r['per_s_first_to_last']:,}" if good else ("–" if r is None else "failed")
                for r, good in zip(cells, ok, strict=True)
            ]
            mems = [
                f"{r['memory']['pss_mib']:.1f} ({r['memory']['processes']})" if good else "–"
                for r, good in zip(cells, ok, strict=True)
            ]
            load = "; ".join(
                f"{r['machine']['others_cpu_pct']:.0f} ({r['machine']['steal_pct']:.0f})"
                if r is not None and "machine" in r
                else "–"
                for r in cells
            )
            lines.append(
                f"| {rnd} | {role} | {rates[0]} | {rates[1]} | {mems[0]} | {mems[1]} | {load} |"
            )
    return "\n".join(lines) + "\n"


def publish(md: str) -> None:
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"{README} has no {MARK_START} ... {MARK_END} markers")
    head, rest = text.split(MARK_START, 1)
    tail = rest.split(MARK_END, 1)[1]
    README.write_text(f"{head}{MARK_START}\n{md.rstrip()}\n{MARK_END}{tail}")


# -- main --------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a git commit, or a checkout directory")
    ap.add_argument("--after", default=".", help="a checkout directory (default .) or a commit")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--smoke", action="store_true", help="1 round, 1,000 jobs: a quick check")
    ap.add_argument("--out", help="write the raw runs and the summary to this JSON file")
    ap.add_argument(
        "--write",
        action="store_true",
        help=f"put the tables between the markers in {README.relative_to(REPO)}",
    )
    ap.add_argument(
        "--python",
        help="interpreter for producer and pools (needs redis-py, "
        "croniter); default: .tools/peers-main, else .venv",
    )
    ap.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the unrecorded warm-up drain of each tree on each store",
    )
    args = ap.parse_args()
    rounds, jobs = (1, 1000) if args.smoke else (args.rounds, args.jobs)

    sys.path.insert(0, str(PEERS))
    import run as peers  # the peer benchmark's harness: redis-servers, SQLite files, adapters

    python = pick_python(args.python, peers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    stores = None
    runs: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []
    order: list[list[str]] = []
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        trees = {
            "before": prepare_tree(args.before, "before", tmp),
            "after": prepare_tree(args.after, "after", tmp),
        }
        probe_dir = tmp / "probe"
        probe_dir.mkdir()
        (probe_dir / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
        stores = peers.Stores()
        log(
            f"redis-server {stores.redis.version} on port {stores.redis.port}, start records "
            f"on port {stores.stamps.port}; interpreter {python}"
        )
        for role in TREES:
            log(f"{role}: {trees[role]['label']}")
        timeout = 120 if args.smoke else 300

        def one(rnd: int, role: str, store: str, n: int) -> dict[str, Any]:
            t = time.monotonic()
            result = run_drain(peers, stores, trees[role], store, n, python, probe_dir, timeout)
            shown = (
                f"error: {result['error']} {result.get('stderr', '')[-400:]}"
                if "error" in result
                else f"{result['per_s_first_to_last']:,} jobs/s, PSS "
                f"{result['memory']['pss_mib']} MiB ({result['memory']['processes']} procs)"
            )
            log(
                f"{'warm-up' if rnd == 0 else f'round {rnd}'} {store:6} {role:6} {shown} "
                f"({time.monotonic() - t:.1f} s)"
            )
            return {"round": rnd, "tree": role, "store": store, "result": result}

        if not args.no_warmup:
            for store in STORES:
                for role in TREES:
                    warmups.append(one(0, role, store, min(jobs, 1000)))
                    if "error" in warmups[-1]["result"]:
                        # A tree that cannot drain (a half-done edit, say) fails every
                        # round alike: stop here, with the child's error above.
                        raise SystemExit(f"the {role} tree failed its warm-up on {store}")
        for rnd in range(1, rounds + 1):
            first_round_order = list(TREES) if rnd % 2 else list(reversed(TREES))
            order.append(first_round_order)
            for store in STORES:
                for role in first_round_order:
                    runs.append(one(rnd, role, store, jobs))
    except KeyboardInterrupt:
        log("interrupted: reporting what there is")
    finally:
        if stores is not None:
            stores.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - started
    if not runs:
        return 1
    done_rounds = max(r["round"] for r in runs)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": peers.machine(),
        "redis": stores.redis.version,
        "python": python,
        "python_version": subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "rounds": done_rounds,
        "jobs": jobs,
        "smoke": args.smoke,
        "order": order[:done_rounds],
        "wall_s": wall,
        "trees": trees,
        "pool_argv": next(
            (r["result"].get("pool_argv") for r in runs if "pool_argv" in r["result"]), None
        ),
    }
    loads = [r["result"]["machine"]["others_cpu_pct"] for r in runs if "machine" in r["result"]]
    meta["others_cpu_pct"] = (
        f"{statistics.median(loads):.0f} % ({min(loads):.0f} – {max(loads):.0f})" if loads else "–"
    )
    summary = summarize(runs)
    md = markdown(meta, summary, runs)
    print(md)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"meta": meta, "summary": summary, "runs": runs, "warmups": warmups}, indent=1
            )
            + "\n"
        )
        log(f"wrote {args.out}")
    if args.write:
        publish(md)
        log(f"updated {README}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "drain":
        child()
    else:
        sys.exit(main())
