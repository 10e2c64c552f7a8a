"""The pure parts of operating a schedule: range arithmetic for never-run ticks, the tick
log's merging and bound, and the one decision every tick passes through."""

from __future__ import annotations

import math
from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies

from skunkqueue import schedule_state as st
from skunkqueue.cron import ScheduleSpec
from skunkqueue.model import ScheduleRecord
from skunkqueue.scheduler.decide import Decision, TickAt, decide


def test_added_ranges_merge_with_what_they_touch_or_overlap():
    ranges = st.add_range([], 10, 20)
    ranges = st.add_range(ranges, 30, 40)
    assert ranges == [[10, 20], [30, 40]]
    assert st.add_range(ranges, 20, 30) == [[10, 40]]  # touching: one range
    assert st.add_range(ranges, 15, 35) == [[10, 40]]
    assert st.add_range(ranges, 0, 5) == [[0, 5], [10, 20], [30, 40]]
    assert st.add_range(ranges, 5, 5) == ranges  # empty: nothing


def test_removed_ranges_split_what_they_cut():
    ranges = [[10, 20], [30, 40]]
    assert st.remove_range(ranges, 12, 14) == [[10, 12], [14, 20], [30, 40]]
    assert st.remove_range(ranges, 0, 35) == [[35, 40]]
    assert st.remove_range(ranges, 20, 30) == ranges
    assert st.intersect(ranges, 15, 35) == [[15, 20], [30, 35]]


def test_gaps_are_bounded_by_dropping_the_oldest():
    ranges = [[i * 10.0, i * 10.0 + 1] for i in range(st.MAX_GAPS + 5)]
    assert st.bounded(ranges) == ranges[5:]


@pytest.mark.parametrize(
    "spec", [ScheduleSpec(every=60.0), ScheduleSpec(cron="* * * * *")], ids=["every", "cron"]
)
def test_ticks_in_ranges_and_their_count_agree(spec):
    base = 1_800_000_000.0  # a whole minute
    ranges = [[base - 30, base + 120], [base + 300, base + 301], [base + 400, base + 420]]
    ticks = list(st.ticks_in(spec, ranges, limit=100))
    assert ticks == [base, base + 60, base + 300]  # ends are open: base + 120 is not in
    assert st.count_ticks(spec, ranges, limit=100) == 3
    assert list(st.ticks_in(spec, ranges, limit=2)) == ticks[:2]
    assert st.count_ticks(spec, [[base, base + 86400 * 365]], limit=1000) == 1000


def test_consecutive_skips_for_one_reason_share_one_log_entry():
    log: list = []
    log = st.logged(log, st.log_entry(0.0, "cron", 0.1, jobs=["a"]))
    for tick in (60.0, 120.0, 180.0):
        log = st.logged(log, st.log_entry(tick, "cron", tick, reason="paused"))
    assert len(log) == 2
    assert (log[1]["count"], log[1]["tick"], log[1]["until"]) == (3, 60.0, 180.0)
    log = st.logged(log, st.log_entry(240.0, "cron", 240.0, reason="overlap"))
    assert len(log) == 3  # another reason: another entry


def test_the_log_keeps_the_last_entries():
    log: list = []
    for tick in range(st.LOG_SIZE + 7):
        log = st.logged(log, st.log_entry(float(tick), "cron", 0.0, jobs=[str(tick)]))
    assert [e["jobs"] for e in log] == [[str(t)] for t in range(7, st.LOG_SIZE + 7)]


def test_trigger_ids_are_unique_per_request_and_never_a_ticks():
    a = st.trigger_job_id("demo", "tasks.report", 1_800_000_000.5, 7)
    b = st.trigger_job_id("demo", "tasks.report", 1_800_000_000.5, 8)
    assert a != b and a.startswith("demo:tasks.report@2027-01-15T08:00:00Z~trigger")


def schedule(state: dict) -> ScheduleRecord:
    return ScheduleRecord("beat", {"every": 60.0}, {"event": "beat"}, 0.0, state=state)


@pytest.mark.parametrize(
    "kind, state, decision",
    [
        ("cron", {}, Decision(True)),
        ("cron", {"paused": {"at": 0.0, "note": None}}, Decision(False, "paused")),
        ("trigger", {"paused": {"at": 0.0, "note": None}}, Decision(True)),
        ("backfill", {"paused": {"at": 0.0, "note": None}}, Decision(True)),
    ],
)
def test_a_pause_skips_the_timetable_not_what_an_operator_asks_for(kind, state, decision):
    tick = TickAt(60.0, kind, "beat@60")
    assert decide(None, schedule(state), state, tick, 61.0) == decision  # type: ignore[arg-type]


DST_CASES = [  # (cron, zone, from, days)
    ("*/7 * * * *", "Europe/Berlin", "2026-03-28", 2),  # spring forward
    ("30 2 * * *", "Europe/Berlin", "2026-03-27", 3),  # a wall time the jump skips
    ("0,30 1,2 * * *", "America/New_York", "2026-10-31", 3),  # fall back: repeated walls
    ("* * * * * */20", "Europe/London", "2026-10-25", 0.2),
    ("*/5 * * * *", "UTC", "2026-12-31", 1),
]


@pytest.mark.parametrize("cron, zone, day, days", DST_CASES)
def test_walking_a_range_gives_the_ticks_that_next_after_gives(cron, zone, day, days):
    """``ticks_between`` walks one croniter instead of building one per tick; across DST
    changes it must keep ``next_after``'s rules exactly."""
    spec = ScheduleSpec(cron=cron, timezone=zone)
    lo = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).timestamp() + 0.5
    hi = lo + days * 86400
    expected, tick = [], spec.next_after(math.ceil(lo) - 1)
    while tick < hi:
        expected.append(tick)
        tick = spec.next_after(tick)
    assert list(spec.ticks_between(lo, hi, limit=100_000)) == expected
    assert list(spec.ticks_between(lo, hi, limit=3)) == expected[:3]


def _covered(ranges: list, lo: int = 0, hi: int = 60) -> set[int]:
    return {p for p in range(lo, hi) if any(a <= p < b for a, b in ranges)}


@settings(max_examples=200, deadline=None)
@given(
    strategies.lists(
        strategies.tuples(
            strategies.booleans(), strategies.integers(0, 50), strategies.integers(0, 10)
        ),
        max_size=12,
    )
)
def test_ranges_behave_as_sets_of_instants(operations):
    """Adding and removing ranges is set union and difference on the instants they hold,
    and the result stays sorted, disjoint and merged."""
    ranges: list = []
    expected: set[int] = set()
    for add, start, length in operations:
        span = set(range(start, start + length))
        if add:
            ranges, expected = st.add_range(ranges, start, start + length), expected | span
        else:
            ranges, expected = st.remove_range(ranges, start, start + length), expected - span
        assert _covered(ranges) == expected
        assert all(a < b for a, b in ranges)
        assert all(b1 < a2 for (_, b1), (a2, _) in pairwise(ranges)), "touching ranges merge"
