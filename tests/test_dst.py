"""Cron ticks across real DST transitions, driven by a fake clock.

Rules pinned here: a wall time skipped by a spring-forward fires once, at the transition;
a wall time repeated by a fall-back fires once, at its first occurrence.

2026 transitions: Europe/Berlin 03-29 01:00Z (02:00 -> 03:00) and 10-25 01:00Z
(03:00 -> 02:00); America/New_York 03-08 07:00Z (02:00 -> 03:00) and 11-01 06:00Z
(02:00 -> 01:00).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from skunkqueue.cron import MISFIRE_POLICIES, ScheduleSpec

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def local(t: float, zone: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(zone)).isoformat()


def chain(spec: ScheduleSpec, start: float, end: float) -> list[float]:
    ticks, t = [], spec.next_after(start)
    while t <= end:
        ticks.append(t)
        t = spec.next_after(t)
    return ticks


# (cron, zone, window start, window end, expected UTC ticks in the window)
CASES = {
    "berlin-spring-daily": (
        "30 2 * * *",
        BERLIN,
        "2026-03-27 12:00",
        "2026-03-30 12:00",
        ["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"],
    ),
    "berlin-spring-half-hourly": (
        "*/30 * * * *",
        BERLIN,
        "2026-03-28 23:45",
        "2026-03-29 02:00",
        [
            "2026-03-29 00:00",
            "2026-03-29 00:30",
            "2026-03-29 01:00",
            "2026-03-29 01:30",
            "2026-03-29 02:00",
        ],
    ),
    "berlin-spring-hourly": (
        "0 * * * *",
        BERLIN,
        "2026-03-28 22:30",
        "2026-03-29 02:30",
        ["2026-03-28 23:00", "2026-03-29 00:00", "2026-03-29 01:00", "2026-03-29 02:00"],
    ),
    "berlin-fall-daily": (
        "30 2 * * *",
        BERLIN,
        "2026-10-23 12:00",
        "2026-10-26 12:00",
        ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"],
    ),
    "berlin-fall-half-hourly": (
        "*/30 * * * *",
        BERLIN,
        "2026-10-24 23:15",
        "2026-10-25 02:45",
        [
            "2026-10-24 23:30",
            "2026-10-25 00:00",
            "2026-10-25 00:30",
            "2026-10-25 02:00",
            "2026-10-25 02:30",
        ],
    ),
    "berlin-fall-hourly": (
        "0 * * * *",
        BERLIN,
        "2026-10-24 22:30",
        "2026-10-25 03:30",
        ["2026-10-24 23:00", "2026-10-25 00:00", "2026-10-25 02:00", "2026-10-25 03:00"],
    ),
    "new-york-spring-daily": (
        "30 2 * * *",
        NEW_YORK,
        "2026-03-07 00:00",
        "2026-03-09 12:00",
        ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"],
    ),
    "new-york-spring-half-hourly": (
        "*/30 * * * *",
        NEW_YORK,
        "2026-03-08 05:45",
        "2026-03-08 08:00",
        [
            "2026-03-08 06:00",
            "2026-03-08 06:30",
            "2026-03-08 07:00",
            "2026-03-08 07:30",
            "2026-03-08 08:00",
        ],
    ),
    "new-york-spring-hourly": (
        "0 * * * *",
        NEW_YORK,
        "2026-03-08 05:30",
        "2026-03-08 08:30",
        ["2026-03-08 06:00", "2026-03-08 07:00", "2026-03-08 08:00"],
    ),
    # 02:30 is not repeated in New York (01:00-02:00 is), so the daily job is unaffected
    "new-york-fall-daily": (
        "30 2 * * *",
        NEW_YORK,
        "2026-10-31 00:00",
        "2026-11-02 12:00",
        ["2026-10-31 06:30", "2026-11-01 07:30", "2026-11-02 07:30"],
    ),
    "new-york-fall-daily-repeated": (
        "30 1 * * *",
        NEW_YORK,
        "2026-10-31 00:00",
        "2026-11-02 12:00",
        ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"],
    ),
    "new-york-fall-half-hourly": (
        "*/30 * * * *",
        NEW_YORK,
        "2026-11-01 04:15",
        "2026-11-01 07:45",
        [
            "2026-11-01 04:30",
            "2026-11-01 05:00",
            "2026-11-01 05:30",
            "2026-11-01 07:00",
            "2026-11-01 07:30",
        ],
    ),
    "new-york-fall-hourly": (
        "0 * * * *",
        NEW_YORK,
        "2026-11-01 03:30",
        "2026-11-01 08:30",
        ["2026-11-01 04:00", "2026-11-01 05:00", "2026-11-01 07:00", "2026-11-01 08:00"],
    ),
}


def case(name: str, misfire: str = "coalesce") -> tuple[ScheduleSpec, float, float, list[float]]:
    cron, zone, start, end, expected = CASES[name]
    spec = ScheduleSpec.build(cron=cron, timezone=zone, misfire=misfire, max_catchup=1000)
    return spec, utc(start), utc(end), [utc(t) for t in expected]


@pytest.mark.parametrize("name", CASES)
def test_next_after_pins_exact_utc_instants(name: str) -> None:
    spec, start, end, expected = case(name)
    assert chain(spec, start, end) == expected


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("misfire", MISFIRE_POLICIES)
def test_precise_clock_fires_each_tick_once(name: str, misfire: str) -> None:
    # A scheduler that wakes exactly at next_fire, as the leader does when idle.
    spec, start, end, expected = case(name, misfire)
    fired, next_fire = [], spec.next_after(start)
    while next_fire <= end:
        now = next_fire
        fired += spec.due_ticks(next_fire, now)
        next_fire = spec.next_after(now)
    assert fired == expected


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("step", [1, 59, 7 * 60])
def test_polling_clock_with_all_fires_each_tick_once(name: str, step: int) -> None:
    # A scheduler polling on its own cadence, late for most ticks: 'all' still fires each once.
    spec, start, end, expected = case(name, "all")
    fired, next_fire, now = [], spec.next_after(start), start
    while now <= end + step:
        now += step
        if next_fire <= now:
            fired += spec.due_ticks(next_fire, now)
            next_fire = spec.next_after(now)
    assert [t for t in fired if t <= end] == expected
    assert len(set(fired)) == len(fired)


@pytest.mark.parametrize("name", CASES)
def test_one_catch_up_across_the_transition(name: str) -> None:
    spec, start, end, expected = case(name, "all")
    assert spec.due_ticks(spec.next_after(start), end) == expected
    coalesced = ScheduleSpec.build(cron=spec.cron, timezone=spec.timezone)
    assert coalesced.due_ticks(spec.next_after(start), end) == [expected[-1]]


def test_spring_forward_runs_skipped_time_at_the_transition() -> None:
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone=BERLIN)
    tick = spec.next_after(utc("2026-03-28 12:00"))
    assert local(tick, BERLIN) == "2026-03-29T03:00:00+02:00"
    # 02:00, 02:30 and 03:00 all land on the transition instant, which fires once
    half_hourly = ScheduleSpec.build(cron="*/30 * * * *", timezone=BERLIN)
    assert half_hourly.next_after(utc("2026-03-29 00:30")) == utc("2026-03-29 01:00")
    assert half_hourly.next_after(utc("2026-03-29 01:00")) == utc("2026-03-29 01:30")


def test_fall_back_runs_repeated_time_on_first_pass_only() -> None:
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone=BERLIN)
    tick = spec.next_after(utc("2026-10-24 12:00"))
    assert local(tick, BERLIN) == "2026-10-25T02:30:00+02:00"
    assert local(spec.next_after(tick), BERLIN) == "2026-10-26T02:30:00+01:00"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-10-25 01:00", "2026-10-25 02:00"),  # 02:00+01:00, second pass begins
        ("2026-10-25 01:29:59", "2026-10-25 02:00"),
        ("2026-10-25 01:30", "2026-10-25 02:00"),  # 02:30+01:00 already ran at 00:30Z
        ("2026-10-25 01:59:59", "2026-10-25 02:00"),
    ],
)
def test_next_after_from_inside_the_repeated_hour(now: str, expected: str) -> None:
    spec = ScheduleSpec.build(cron="*/30 * * * *", timezone=BERLIN)
    assert spec.next_after(utc(now)) == utc(expected)


def test_due_ticks_from_inside_the_repeated_hour() -> None:
    # The clock reads 02:10+01:00; 02:30+02:00 (00:30Z) was due and must still be found.
    spec = ScheduleSpec.build(cron="30 2 * * *", timezone=BERLIN, misfire="all")
    now = utc("2026-10-25 01:10")
    assert spec.due_ticks(utc("2026-10-25 00:30"), now) == [utc("2026-10-25 00:30")]
    assert spec.due_ticks(spec.next_after(now), now) == []


def test_per_second_cron_across_fall_back() -> None:
    # The whole repeated hour is skipped, without walking it second by second.
    spec = ScheduleSpec.build(cron="* * * * * *", timezone=BERLIN, misfire="all", max_catchup=3)
    assert spec.next_after(utc("2026-10-25 00:59:59")) == utc("2026-10-25 02:00")
    assert spec.due_ticks(utc("2026-10-25 00:59:58"), utc("2026-10-25 02:00:01")) == [
        utc("2026-10-25 00:59:59"),
        utc("2026-10-25 02:00"),
        utc("2026-10-25 02:00:01"),
    ]


def reference(cron: str, zone: str, start: float, end: float) -> list[float]:
    """Ticks in (start, end] found by scanning UTC seconds (an independent method)."""
    tz, ticks = ZoneInfo(zone), []
    step = 60 if len(cron.split()) == 5 else 10
    for t in range(int(start) // step * step + step, int(end) + 1, step):
        wall = datetime.fromtimestamp(t, tz)
        before = datetime.fromtimestamp(t - step, tz).replace(tzinfo=None)
        naive, gap = wall.replace(tzinfo=None), []
        while naive - before > timedelta(seconds=step):  # wall times the clock jumped over
            before += timedelta(seconds=step)
            gap.append(before)
        if any(croniter.match(cron, w) for w in [*gap, naive]) and not wall.fold:
            ticks.append(float(t))
    return ticks


WINDOWS = [
    (BERLIN, "2026-03-28 20:00", "2026-03-29 05:00"),
    (BERLIN, "2026-10-24 20:00", "2026-10-25 05:00"),
    (NEW_YORK, "2026-03-08 02:00", "2026-03-08 11:00"),
    (NEW_YORK, "2026-11-01 02:00", "2026-11-01 11:00"),
]


@pytest.mark.parametrize(("zone", "start", "end"), WINDOWS)
@pytest.mark.parametrize(
    "cron",
    [
        "*/30 * * * *",
        "0 * * * *",
        "30 2 * * *",
        "15 1-3 * * *",
        "*/7 * * * *",
        "59 * * * *",
        "0 2 * * *",
        "* 2 * * * */20",
    ],
)
def test_matches_independent_scan(zone: str, start: str, end: str, cron: str) -> None:
    spec = ScheduleSpec.build(cron=cron, timezone=zone, misfire="all", max_catchup=10_000)
    expected = reference(cron, zone, utc(start), utc(end))
    assert chain(spec, utc(start), utc(end)) == expected
    assert spec.due_ticks(utc(start) + 1, utc(end)) == expected
