"""The peer benchmark's own arithmetic (benchmarks/peers): how start records become the
published figures. The benchmark itself needs the peers' virtualenvs and is not run here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PEERS = Path(__file__).resolve().parent.parent / "benchmarks" / "peers"


def load(name: str) -> ModuleType:
    """Under a name of its own: 'common' and 'run' must not shadow anything else."""
    spec = importlib.util.spec_from_file_location(f"peers_{name}", PEERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


common = load("common")
run = load("run")


def test_cron_lateness_takes_each_start_to_its_minute_and_counts_what_went_wrong():
    t0, t_end = 1_000_000_000.0 - 30, 1_000_000_000.0 + 200  # boundaries ...:00 (x4 in window)
    b = [1_000_000_020.0 + 60 * i for i in range(-1, 4)]
    starts = [
        b[0] + 0.5,  # before the window: not expected
        b[1] + 0.012,
        b[2] - 0.3,  # early
        b[2] + 0.01,  # a second start of the same tick
        # b[3]: never started
    ]
    got = common.cron_lateness(starts, t0, t_end)
    assert got["expected_ticks"] == 3
    assert got["ticks"] == 2 and got["missing"] == 1
    assert got["duplicates"] == 1 and got["early"] == 1 and got["unexpected"] == 1
    assert got["lateness_ms"] == [12.0, -300.0]


def test_cron_lateness_counts_a_start_long_after_its_minute_as_late_not_early():
    t0 = 1_000_000_000.0
    boundary = 1_000_000_020.0
    got = common.cron_lateness([boundary + 45.0], t0, t0 + 80)
    assert got["lateness_ms"] == [45000.0] and got["early"] == 0


def test_percentile_interpolates():
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert common.percentile([5.0], 99) == 5.0


def test_memory_sums_a_process_and_its_children():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "print(c.pid, flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert set(common.process_tree([parent.pid])) == {parent.pid, child}
        mem = common.memory([parent.pid])
        assert mem["processes"] == 2
        assert 1 < mem["pss_mib"] <= mem["rss_mib"]
    finally:
        for pid in common.process_tree([parent.pid])[::-1]:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait(timeout=10)


def raw_run(rnd, lib, scenario, value, **extra):
    key = {"enqueue": "per_s", "drain": "per_s_first_to_last", "delayed": "p99_ms"}[scenario]
    result = {"jobs": 100, key: value, **extra}
    if scenario == "drain":
        result.update(
            per_s=value / 2,
            startup_s=0.3,
            memory={"pss_mib": 40.0, "rss_mib": 60.0, "processes": 3},
        )
    if scenario == "delayed":
        result.update(p50_ms=1.0, max_ms=value, early=0)
    return {"round": rnd, "lib": lib, "scenario": scenario, "result": result}


def test_ratios_are_taken_within_a_round_and_medians_across_rounds():
    libs = [lib for lib in run.LIBS if lib["name"] in ("skunkqueue", "huey")]
    raw = [
        raw_run(1, "skunkqueue", "drain", 1000.0),
        raw_run(1, "huey", "drain", 500.0),
        raw_run(2, "skunkqueue", "drain", 4000.0),  # a fast round for everyone
        raw_run(2, "huey", "drain", 3000.0),
        raw_run(3, "skunkqueue", "drain", 2000.0),
        {"round": 3, "lib": "huey", "scenario": "drain", "result": {"error": "exit 1"}},
    ]
    row = run.summarize(raw, libs)["redis"]["drain"]["huey"]
    assert row["ratio_median"] == pytest.approx((0.5 + 0.75) / 2)
    assert (row["median"], row["min"], row["max"]) == (1750.0, 500.0, 3000.0)
    assert row["ok"] == 2 and row["errors"] == ["exit 1"]
    assert row["pss_mib"] == 40.0 and row["processes"] == 3


def test_markdown_publishes_into_the_readme_markers(tmp_path):
    libs = [lib for lib in run.LIBS if lib["name"] in ("skunkqueue", "huey")]
    raw = [raw_run(1, "skunkqueue", "delayed", 2.0), raw_run(1, "huey", "delayed", 990.0)]
    summary = run.summarize(raw, libs)
    summary["cron"], summary["redis_benchmark"] = {}, {}
    meta = {
        "date": "d",
        "machine": "m",
        "redis": "7",
        "rounds": 1,
        "wall_s": 1.0,
        "sizes": {"enqueue": 1, "drain": 1, "delayed": 300, "spread": 3.0, "cron_s": 200.0},
        "versions": {},
    }
    md = run.markdown(meta, summary)
    assert "| huey | 1.0 | 990.0 (990.0 – 990.0) | 990.0 | 0 |" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.RESULTS_START}\nold\n{run.RESULTS_END}\nafter\n")
    assert run.publish(readme, md)
    text = readme.read_text()
    assert "old" not in text and md.strip() in text and text.endswith("after\n")


def test_goals_are_judged_against_peers_only():
    red = {
        "drain": {
            "redis-py ceiling": {"median": 9000.0, "pss_mib": 10.0, "processes": 2},
            "skunkqueue": {"median": 3000.0, "pss_mib": 40.0, "processes": 3},
            "huey": {"median": 1500.0, "pss_mib": 41.0, "processes": 4},
        },
        "enqueue": {"skunkqueue": {"median": 100.0}, "huey": {"median": 120.0}},
        "delayed": {"skunkqueue": {"median": 3.0, "early_worst": 1}},
    }
    rows = run.goals_table(red)[2:]
    assert rows[0].endswith("fastest peer huey 1,500 (2.00x) | met |")
    assert rows[1].endswith("fastest peer huey 120 (0.83x) | **not met** |")
    assert rows[2].endswith("p99 3.0 ms, 1 early | **not met** |")
    assert rows[3].endswith("leanest peer huey 41.0 MiB (4) | met |")
