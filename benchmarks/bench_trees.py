"""Fire and drain before/after: two source trees of skunkqueue, one run, interleaved rounds.

    python3 benchmarks/bench_trees.py --before 3c72716 [--after .] [--rounds 7]
                                      [--stores redis,sqlite] [--smoke] [--out FILE.json]

The check a refactor must pass ("drain and fire on Redis and SQLite within 5 % in the same
run"): bench.py's ``fire`` and ``drain`` phases for two trees side by side. ``--before`` and
``--after`` are each a git commit (``skunkqueue/`` and ``benchmarks/`` exported with
``git archive`` into a temp dir, removed at the end) or a directory holding a checkout
(``--after`` defaults to ``.``, the work tree with its uncommitted changes); the tree
handling is bench_pool.py's, imported.

Each run is one subprocess of the measured tree's own bench.py (``--only fire,drain --runs 1
--json FILE``, plus ``--redis`` for an own redis-server on a free port, or a fresh SQLite
file), started with PYTHONPATH pointing at that tree. In every round each tree runs once per
store, and the tree that goes first alternates from round to round, so the machine's drift
hits both alike. The report gives per store and figure the median of each tree, the ratio
after / before of the medians and the median (min - max) of the per-round ratios.

Which skunkqueue ran is checked three ways: before the rounds (``python -c`` with the run's
PYTHONPATH), in the bench process (recorded in its JSON) and in the worker pool's supervisor
(a ``sitecustomize`` probe on PYTHONPATH records it at exit); a run from the wrong tree
stops the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
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

import bench_pool  # benchmarks/bench_pool.py, next to this script: trees, CPU accounting
from bench_pool import TREES, log

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STORES = ("redis", "sqlite")
DRAIN_JOBS = 20000  # bench.py's default is 50,000 (2 and 3 workers): about 2 s a drain here
DRAIN_WORKERS = "2"

# Put on PYTHONPATH (after the tree) for every run. Every interpreter the run starts (the
# bench process, each `skunq work` supervisor; its workers are forked) records at exit the
# skunkqueue it imported. The interpreters used here have no sitecustomize of their own
# (checked before the rounds), so this one shadows nothing.
PROBE_SOURCE = """\
import atexit
import os
import sys


def _bench_trees_record():
    module = sys.modules.get("skunkqueue")
    out = os.environ.get("BENCH_TREES_PROBE_OUT")
    if module is not None and out and getattr(module, "__file__", None):
        role = "pool" if "work" in sys.argv[1:2] else "bench"
        with open(out, "a") as f:
            f.write(f"{os.getpid()} {role} {os.path.realpath(module.__file__)}\\n")


atexit.register(_bench_trees_record)
"""

# Options this script passes to a tree's bench.py; an older bench.py without one of them is
# run without it, and the report says so.
WANTED_OPTIONS = ("--only", "--runs", "--json", "--redis", "--drain-jobs", "--drain-workers")


# -- the child: one run of a tree's bench.py ----------------------------------------------


def child(argv: list[str]) -> int:
    """``bench_trees.py child BENCH_DIR -- ARGS``: the bench.py in BENCH_DIR, imported and
    run with ARGS, minus its redis-benchmark ceiling (about 15 s a Redis run, no tree's
    figure); the skunkqueue it imported is added to its JSON."""
    bench_dir = Path(argv[0]).resolve()
    args = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    here = str(BENCH)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]
    sys.path.insert(0, str(bench_dir))
    import bench  # the measured tree's own bench.py

    import skunkqueue

    patched = []
    redis_part = getattr(bench, "bench_redis", None)
    if redis_part is not None and hasattr(redis_part, "round_trip"):
        redis_part.round_trip = lambda url, pings: {}  # an empty result: not reported
        patched.append("bench_redis.round_trip skipped")
    sys.argv = [str(bench_dir / "bench.py"), *args]
    rc = bench.main()
    if "--json" in args:
        path = Path(args[args.index("--json") + 1])
        if path.exists():
            data = json.loads(path.read_text())
            data["bench_trees"] = {
                "skunkqueue": os.path.realpath(skunkqueue.__file__),
                "bench_py": os.path.realpath(bench.__file__),
                "patched": patched,
            }
            path.write_text(json.dumps(data, indent=2) + "\n")
    return rc or 0


# -- trees ---------------------------------------------------------------------------------


def export_benchmarks(tree: dict[str, Any], spec: str) -> None:
    """bench_pool.prepare_tree exports skunkqueue/ only; a commit's benchmarks/ is needed
    too, to run the bench.py that matches its API."""
    sha = bench_pool.git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    out = subprocess.run(
        ["git", "archive", "--format=tar", sha, "benchmarks"], cwd=REPO, capture_output=True
    )
    if out.returncode != 0:
        raise SystemExit(f"git archive {sha} benchmarks: {out.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(tree["path"], filter="data")


def prepare(spec: str, role: str, tmp: Path, python: str) -> dict[str, Any]:
    """The tree (bench_pool's), its bench.py, the options that bench.py has, and a check
    that its PYTHONPATH imports its skunkqueue."""
    tree = bench_pool.prepare_tree(spec, role, tmp)
    if not os.path.isdir(spec):
        export_benchmarks(tree, spec)
    tree["notes"] = []
    bench_dir = Path(tree["path"]) / "benchmarks"
    if not (bench_dir / "bench.py").exists():
        tree["notes"].append(f"no benchmarks/bench.py in the tree: used {BENCH / 'bench.py'}")
        bench_dir = BENCH
    tree["bench_dir"] = str(bench_dir)
    tree["bench_py_sha256"] = hashlib.sha256((bench_dir / "bench.py").read_bytes()).hexdigest()
    env = dict(os.environ, PYTHONPATH=tree["path"])
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util, os, skunkqueue; "
            "print(os.path.realpath(skunkqueue.__file__)); "
            "print(importlib.util.find_spec('sitecustomize') is not None)",
        ],
        cwd=bench_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise SystemExit(f"{role} tree: cannot import skunkqueue:\n{probe.stderr[-2000:]}")
    imported, has_sitecustomize = probe.stdout.split()
    if imported != expected_init(tree):
        raise SystemExit(f"{role} tree: imports {imported}, expected {expected_init(tree)}")
    if has_sitecustomize == "True":
        raise SystemExit(f"{python} has a sitecustomize of its own: the pool probe would hide it")
    helped = subprocess.run(
        [python, str(bench_dir / "bench.py"), "--help"],
        cwd=bench_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    if helped.returncode != 0:
        raise SystemExit(f"{role} tree: bench.py --help failed:\n{helped.stderr[-2000:]}")
    tree["options"] = sorted(set(re.findall(r"--[a-z][a-z-]*", helped.stdout)))
    for option in WANTED_OPTIONS:
        if option not in tree["options"]:
            if option in ("--json", "--redis"):
                raise SystemExit(f"{role} tree: its bench.py has no {option}")
            tree["notes"].append(f"its bench.py has no {option}: run with its default")
    return tree


def expected_init(tree: dict[str, Any]) -> str:
    return os.path.realpath(os.path.join(tree["path"], "skunkqueue", "__init__.py"))


def bench_args(tree: dict[str, Any], store: str, args: argparse.Namespace) -> list[str]:
    wanted = ["--only", "fire,drain", "--runs", "1", "--drain-workers", args.drain_workers]
    if args.smoke:
        wanted += ["--quick"]
    else:
        wanted += ["--drain-jobs", str(args.drain_jobs)]
    if store == "redis":
        wanted += ["--redis"]
    out: list[str] = []
    i = 0
    while i < len(wanted):
        takes_value = i + 1 < len(wanted) and not wanted[i + 1].startswith("--")
        if wanted[i] in tree["options"]:
            out += wanted[i : i + 1 + takes_value]
        i += 1 + takes_value
    return out


# -- one run -------------------------------------------------------------------------------


def run_bench(
    tree: dict[str, Any],
    store: str,
    args: argparse.Namespace,
    python: str,
    tmp: Path,
    timeout: float,
) -> dict[str, Any]:
    json_path = tmp / f"run-{tree['role']}-{store}.json"
    probe_out = tmp / f"probe-{tree['role']}-{store}.txt"
    for path in (json_path, probe_out):
        path.unlink(missing_ok=True)
    argv = [
        python,
        str(Path(__file__).resolve()),
        "child",
        tree["bench_dir"],
        "--",
        *bench_args(tree, store, args),
        "--json",
        str(json_path),
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([tree["path"], str(tmp / "probe")]),
        BENCH_TREES_PROBE_OUT=str(probe_out),
    )
    cpu_before = bench_pool.cpu_snapshot([])
    proc = subprocess.Popen(
        argv,
        cwd=tree["bench_dir"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        # SIGINT lets bench.py stop its pools and redis-server (each in its own session).
        os.killpg(proc.pid, signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        if isinstance(exc, KeyboardInterrupt):
            raise
    wall = time.monotonic() - cpu_before["wall"]
    record: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "machine": bench_pool.machine_load(cpu_before, bench_pool.cpu_snapshot([])),
    }
    if proc.returncode != 0 or not json_path.exists():
        record["error"] = f"exit {proc.returncode}" + (" (timeout)" if wall > timeout else "")
        record["stderr"] = stderr[-3000:]
        record["stdout"] = stdout[-2000:]
        return record
    record["bench"] = json.loads(json_path.read_text())
    probes = probe_out.read_text().splitlines() if probe_out.exists() else []
    record["imported"] = sorted({tuple(line.split(" ", 2)[1:]) for line in probes})
    expected = expected_init(tree)
    seen = {path for _, path in record["imported"]}
    seen.add(record["bench"].get("bench_trees", {}).get("skunkqueue", expected))
    roles = {role for role, _ in record["imported"]}
    if seen != {expected} or not {"bench", "pool"} <= roles:
        raise SystemExit(
            f"{tree['role']} tree on {store}: imported {record['imported']}, expected "
            f"{expected} in the bench process and its pools"
        )
    return record


# -- figures -------------------------------------------------------------------------------


def figures(stores: list[str], workers: list[int]) -> list[tuple[str, str, str, str]]:
    """(key, store, label, where): where is ``fire:<field>`` or ``drain<N>:<field>``."""
    out = []
    for store in stores:
        name = {"redis": "Redis", "sqlite": "SQLite"}[store]
        out += [
            (f"{store}_fire", store, f"{name} `fire()`", "fire:fire_per_s"),
            (f"{store}_fire_many", store, f"{name} `fire_many()`", "fire:fire_many_per_s"),
        ]
        for w in workers:
            out += [
                (
                    f"{store}_drain{w}",
                    store,
                    f"{name} drain, {w} workers, pool start → all complete",
                    f"drain{w}:per_s_from_pool_start",
                ),
                (
                    f"{store}_drain{w}_jobs",
                    store,
                    f"{name} drain, {w} workers, first start → last finish",
                    f"drain{w}:per_s_from_first_start",
                ),
            ]
        if store == "redis":
            out.append(
                (
                    "redis_lpush",
                    store,
                    "Redis LPUSH loop (control: the same code in both trees)",
                    "fire:lpush_per_s",
                )
            )
    return out


def value(record: dict[str, Any], where: str) -> float | None:
    if "bench" not in record:
        return None
    phase, field = where.split(":")
    data = record["bench"]
    if phase == "fire":
        return (data.get("fire") or {}).get(field)
    workers = int(phase.removeprefix("drain"))
    drains = [d for d in data.get("drain", []) if d.get("workers") == workers]
    return drains[0].get(field) if drains else None


def summarize(runs: list[dict[str, Any]], figs: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, store, label, where in figs:
        row: dict[str, Any] = {"label": label, "store": store}
        for role in TREES:
            mine = [r for r in runs if r["tree"] == role and r["store"] == store]
            vals = [v for v in (value(r, where) for r in mine) if v is not None]
            row[role] = {
                "values": vals,
                "missing": len(mine) - len(vals),
                "median": statistics.median(vals) if vals else None,
            }
        ratios = []
        for rnd in sorted({r["round"] for r in runs}):
            pair = {
                r["tree"]: value(r, where)
                for r in runs
                if r["round"] == rnd and r["store"] == store
            }
            if pair.get("before") and pair.get("after") is not None:
                ratios.append(pair["after"] / pair["before"])
        b, a = row["before"]["median"], row["after"]["median"]
        row["ratio_of_medians"] = a / b if a is not None and b else None
        row["round_ratios"] = ratios
        out[key] = row
    return out


def markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    trees = meta["trees"]
    load = meta["loadavg"]
    lines = [
        f"Run {meta['date']}, {meta['cpus']} CPUs, Python {meta['python_version']}; "
        f"{meta['rounds']} interleaved round(s) (the tree that goes first alternates), "
        f"{meta['wall_s']:.0f} s in all{' (smoke run: tiny sizes)' if meta['smoke'] else ''}. "
        f"Sizes: {meta['sizes']}. "
        f"**before** = {trees['before']['label']}; **after** = {trees['after']['label']}. "
        f"Load average (1 min) {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at "
        f"the end; processes outside the benchmark used {meta['others_cpu_pct']} of the "
        "machine's CPU during the runs (median (min – max)).",
        "",
        "| figure, jobs/s | before | after | after / before, medians "
        "| per round: median (min – max) | within 5 % |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.values():
        cells = []
        for role in TREES:
            cell = row[role]
            text = "failed" if cell["median"] is None else f"{cell['median']:,.0f}"
            cells.append(text + (f" ({cell['missing']} failed)" if cell["missing"] else ""))
        ratio = row["ratio_of_medians"]
        rr = row["round_ratios"]
        per_round = f"{statistics.median(rr):.3f}x ({min(rr):.3f} – {max(rr):.3f})" if rr else "–"
        within = "–" if ratio is None else ("yes" if abs(ratio - 1) <= 0.05 else "**no**")
        lines.append(
            f"| {row['label']} | {cells[0]} | {cells[1]} | "
            f"{'–' if ratio is None else f'{ratio:.3f}x'} | {per_round} | {within} |"
        )
    notes = [f"{role}: {n}" for role in TREES for n in trees[role]["notes"]]
    if trees["before"]["bench_py_sha256"] != trees["after"]["bench_py_sha256"]:
        notes.append("the two trees' bench.py differ: each tree ran its own")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def pick_python(explicit: str | None) -> str:
    """--python, else the repository's .venv (redis-py, croniter), else this interpreter."""
    if explicit:
        return explicit
    local = REPO / ".venv" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a git commit, or a checkout directory")
    ap.add_argument("--after", default=".", help="a checkout directory (default .) or a commit")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--stores", default=",".join(STORES), help="redis,sqlite (the default)")
    ap.add_argument(
        "--drain-jobs",
        type=int,
        default=DRAIN_JOBS,
        help=f"no-op jobs per drain (default {DRAIN_JOBS:,})",
    )
    ap.add_argument(
        "--drain-workers",
        default=DRAIN_WORKERS,
        help=f"worker counts to drain with, comma-separated (default {DRAIN_WORKERS})",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="1 round of bench.py --quick, no warm-up (~3 s)"
    )
    ap.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up runs")
    ap.add_argument("--out", help="write the raw runs and the summary to this JSON file")
    ap.add_argument("--python", help="interpreter for the runs (default: .venv's python)")
    args = ap.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or set(stores) - set(STORES):
        ap.error(f"--stores: choose from {','.join(STORES)}")
    workers = [int(w) for w in args.drain_workers.split(",")]
    rounds = 1 if args.smoke else args.rounds
    warmup = not (args.smoke or args.no_warmup)
    python = pick_python(args.python)
    timeout = 120 if args.smoke else 300

    loadavg_start = os.getloadavg()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-trees-"))
    (tmp / "probe").mkdir()
    (tmp / "probe" / "sitecustomize.py").write_text(PROBE_SOURCE)
    runs: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []
    order: list[list[str]] = []
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        trees = {role: prepare(getattr(args, role), role, tmp, python) for role in TREES}
        log(f"load average {loadavg_start[0]:.2f}; interpreter {python}")
        for role in TREES:
            notes = "; ".join(trees[role]["notes"])
            log(f"{role}: {trees[role]['label']}" + (f" [{notes}]" if notes else ""))

        def one(rnd: int, role: str, store: str) -> dict[str, Any]:
            record = run_bench(trees[role], store, args, python, tmp, timeout)
            record.update(round=rnd, tree=role, store=store)
            if "error" in record:
                shown = f"error: {record['error']}\n{record['stderr'][-1500:]}"
            else:
                shown = ", ".join(
                    f"{label.split(' ', 1)[1]} {value(record, where):,}"
                    for _, s, label, where in figures([store], workers)
                    if s == store and value(record, where) is not None
                )
            log(
                f"{'warm-up' if rnd == 0 else f'round {rnd}'} {store:6} {role:6} {shown} "
                f"({record['wall_s']:.1f} s, others {record['machine']['others_cpu_pct']:.0f} %)"
            )
            return record

        if warmup:
            for store in stores:
                for role in TREES:
                    warmups.append(one(0, role, store))
                    if "error" in warmups[-1]:
                        raise SystemExit(f"the {role} tree failed its warm-up on {store}")
        for rnd in range(1, rounds + 1):
            first = list(TREES) if rnd % 2 else list(reversed(TREES))
            order.append(first)
            for store in stores:
                for role in first:
                    runs.append(one(rnd, role, store))
    except KeyboardInterrupt:
        log("interrupted: reporting what there is")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not runs:
        return 1
    figs = figures(stores, workers)
    summary = summarize(runs, figs)
    sizes_note = (
        "bench.py --quick (fire() 200, fire_many() 1,000, drain 1,000)"
        if args.smoke
        else f"fire() 10,000, fire_many() 20,000 (bench.py's), drain {args.drain_jobs:,} "
        f"with {args.drain_workers} workers; bench.py --runs 1, --redis: an own "
        "redis-server per run"
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": python,
        "python_version": subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "rounds": max(r["round"] for r in runs),
        "order": order,
        "smoke": args.smoke,
        "stores": stores,
        "sizes": sizes_note,
        "bench_argv": {
            role: {store: bench_args(trees[role], store, args) for store in stores}
            for role in TREES
        },
        "wall_s": time.monotonic() - started,
        "loadavg": {"start": loadavg_start, "end": os.getloadavg()},
        "trees": trees,
    }
    loads = [r["machine"]["others_cpu_pct"] for r in runs]
    meta["others_cpu_pct"] = (
        f"{statistics.median(loads):.0f} % ({min(loads):.0f} – {max(loads):.0f})"
    )
    md = markdown(meta, summary)
    print(md)
    if args.out:
        payload = {"meta": meta, "summary": summary, "runs": runs, "warmups": warmups}
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        log(f"wrote {args.out}")
    failed = sum(1 for r in runs if "error" in r)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2:]))
    else:
        sys.exit(main())
