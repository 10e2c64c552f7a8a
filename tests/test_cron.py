"""ScheduleSpec: validation, tick arithmetic and misfire policies, with times passed in."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from skunkqueue import cron as cron_module
from skunkqueue.cron import MISFIRE_POLICIES, ScheduleSpec
from skunkqueue.errors import ConfigurationError

from .drivers import require


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


T0 = utc("2026-01-01 00:00:00")  # a Thursday, and a multiple of every interval below


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of cron= or every=, got neither"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= or every=, got both"),
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *': "),
        ({"cron": "x y z a b"}, "invalid cron expression 'x y z a b'"),
        ({"cron": "* * *"}, "expected 5 fields, or 6 with seconds last"),
        ({"cron": "* * * * * * 2030"}, "expected 5 fields, or 6 with seconds last"),
        ({"cron": "@reboot"}, "invalid cron expression '@reboot'"),
        ({"cron": "0 0 31 2 *"}, "invalid cron expression '0 0 31 2 *'"),
        ({"cron": 5}, "cron= must be a string"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "timezone": "../etc/passwd"}, "unknown time zone"),
        ({"cron": "* * * * *", "timezone": timezone(timedelta(hours=2))}, "has no IANA name"),
        ({"every": 0}, "every= must be whole seconds >= 1, got 0"),
        ({"every": -5}, "must be whole seconds >= 1"),
        ({"every": 1.5}, "every= must be whole seconds >= 1, got 1.5"),
        ({"every": timedelta(milliseconds=500)}, "must be whole seconds >= 1"),
        ({"every": float("inf")}, "must be whole seconds >= 1"),
        ({"every": "30"}, "every= must be seconds or a timedelta, not '30'"),
        ({"every": True}, "every= must be seconds or a timedelta"),
        (
            {"every": 5, "misfire": "later"},
            "misfire='later' is not one of ('coalesce', 'all', 'skip')",
        ),
        ({"every": 5, "max_catchup": 0}, "max_catchup must be an integer >= 1, not 0"),
        ({"every": 5, "max_catchup": 2.5}, "max_catchup must be an integer >= 1, not 2.5"),
    ],
)
def test_build_rejects_with_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ScheduleSpec.build(**kwargs)
    assert message in str(info.value)


def test_invalid_cron_message_carries_croniter_reason() -> None:
    with pytest.raises(ConfigurationError) as info:
        ScheduleSpec.build(cron="61 * * * *")
    assert "out of range" in str(info.value)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ScheduleSpec.build(every=-1)


def test_build_normalises_inputs() -> None:
    spec = ScheduleSpec.build(cron="  */5   * * * * ", timezone=ZoneInfo("Europe/Berlin"))
    assert spec.cron == "*/5 * * * *"
    assert spec.timezone == "Europe/Berlin"
    assert ScheduleSpec.build(every=timedelta(minutes=5)).every == 300.0
    assert ScheduleSpec.build(every=30).every == 30.0
    assert ScheduleSpec.build(cron="* * * * *").timezone == "UTC"
    assert ScheduleSpec.build(cron="* * * * *", timezone=timezone.utc).timezone == "UTC"
    assert MISFIRE_POLICIES == ("coalesce", "all", "skip")


def test_build_accepts_pytz_zone_by_name() -> None:
    pytz = require("pytz")
    spec = ScheduleSpec.build(cron="0 9 * * *", timezone=pytz.timezone("America/New_York"))
    assert spec.timezone == "America/New_York"


def test_timezone_with_every_is_accepted_and_has_no_effect() -> None:
    spec = ScheduleSpec.build(every=3600, timezone="Asia/Kolkata")  # a +05:30 zone
    assert spec.next_after(T0 + 1) == T0 + 3600


def test_direct_construction_and_from_dict_validate_too() -> None:
    with pytest.raises(ConfigurationError, match="grace"):
        ScheduleSpec(every=5, grace=-1)
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        ScheduleSpec.from_dict({"cron": "* * * * *", "timezone": "Nowhere/Town"})
    with pytest.raises(ConfigurationError, match="mapping"):
        ScheduleSpec.from_dict(["* * * * *"])  # type: ignore[arg-type]


# -- cron forms and next_after ------------------------------------------------------


def test_five_field_cron() -> None:
    spec = ScheduleSpec.build(cron="*/5 * * * *")
    assert spec.next_after(T0) == T0 + 300
    assert spec.next_after(T0 + 299.5) == T0 + 300


def test_six_field_cron_has_seconds_last() -> None:
    spec = ScheduleSpec.build(cron="* * * * * */10")
    ticks, t = [], T0
    for _ in range(7):
        t = spec.next_after(t)
        ticks.append(t - T0)
    assert ticks == [10, 20, 30, 40, 50, 60, 70]
    assert ScheduleSpec.build(cron="5 * * * * 30").next_after(T0) == T0 + 5 * 60 + 30


def test_alias_cron() -> None:
    assert ScheduleSpec.build(cron="@hourly").next_after(T0) == T0 + 3600


def test_cron_uses_the_spec_time_zone() -> None:
    spec = ScheduleSpec.build(cron="0 9 * * *", timezone="Asia/Tokyo")  # +09:00, no DST
    assert spec.next_after(T0) == utc("2026-01-02 00:00:00")


def test_next_after_is_strictly_after_and_whole_seconds() -> None:
    spec = ScheduleSpec.build(cron="0 * * * *")
    assert spec.next_after(T0) == T0 + 3600  # T0 is itself a tick
    assert spec.next_after(T0 - 0.25) == T0
    assert spec.next_after(T0 + 0.75) == T0 + 3600
    assert isinstance(spec.next_after(T0), float)
    assert spec.next_after(T0 + 0.75).is_integer()


def test_interval_ticks_are_multiples_of_every_since_epoch() -> None:
    spec = ScheduleSpec.build(every=7)
    t = 1_000_003.5
    first = spec.next_after(t)
    assert first == 1_000_006.0 and first % 7 == 0
    assert spec.next_after(first) == first + 7  # strictly after
    assert spec.next_after(first - 0.001) == first
    # no anchor: two specs built at different times agree
    assert ScheduleSpec.build(every=7).next_after(t) == first
    assert ScheduleSpec.build(every=timedelta(days=1)).next_after(T0 + 5) == T0 + 86400


# -- due_ticks --------------------------------------------------------------------


def minutely(misfire: str, max_catchup: int = 100) -> ScheduleSpec:
    return ScheduleSpec.build(cron="* * * * *", misfire=misfire, max_catchup=max_catchup)


@pytest.mark.parametrize("misfire", MISFIRE_POLICIES)
def test_nothing_due_before_next_fire(misfire: str) -> None:
    assert minutely(misfire).due_ticks(T0 + 60, T0 + 59.9) == []


@pytest.mark.parametrize("misfire", MISFIRE_POLICIES)
def test_on_time_tick_fires_once_under_every_policy(misfire: str) -> None:
    spec = minutely(misfire)
    assert spec.due_ticks(T0 + 60, T0 + 60) == [T0 + 60]
    assert spec.due_ticks(T0 + 60, T0 + 60.9) == [T0 + 60]


def test_all_fires_each_missed_tick_oldest_first() -> None:
    assert minutely("all").due_ticks(T0 + 60, T0 + 250) == [T0 + 60, T0 + 120, T0 + 180, T0 + 240]


def test_all_keeps_only_the_last_max_catchup() -> None:
    assert minutely("all", max_catchup=2).due_ticks(T0 + 60, T0 + 250) == [T0 + 180, T0 + 240]


def test_coalesce_fires_only_the_latest_due_tick() -> None:
    assert minutely("coalesce").due_ticks(T0 + 60, T0 + 250) == [T0 + 240]


def test_skip_drops_missed_ticks() -> None:
    spec = minutely("skip")
    assert spec.due_ticks(T0 + 60, T0 + 250) == []  # 240 is 10 s late, grace is 1 s
    assert spec.due_ticks(T0 + 60, T0 + 241) == [T0 + 240]  # exactly grace late: on time
    assert spec.due_ticks(T0 + 60, T0 + 241.01) == []


def test_skip_with_wide_grace_fires_every_on_time_tick() -> None:
    spec = ScheduleSpec(cron="* * * * *", misfire="skip", grace=150)
    assert spec.due_ticks(T0 + 60, T0 + 250) == [T0 + 120, T0 + 180, T0 + 240]


def test_next_fire_between_ticks_counts_from_the_next_tick() -> None:
    assert minutely("all").due_ticks(T0 + 61, T0 + 200) == [T0 + 120, T0 + 180]


def test_interval_due_ticks() -> None:
    spec = ScheduleSpec.build(every=30, misfire="all")
    assert spec.due_ticks(T0 + 30, T0 + 95) == [T0 + 30, T0 + 60, T0 + 90]
    assert ScheduleSpec.build(every=30).due_ticks(T0 + 30, T0 + 95) == [T0 + 90]


class CountingCroniter:
    """Counts croniter constructions: the unit of work in due_ticks."""

    def __init__(self, real: Callable[..., object]) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.mark.parametrize(
    ("misfire", "expected_count"), [("all", 100), ("coalesce", 1), ("skip", 1)]
)
def test_work_is_bounded_after_thirty_days_down(
    monkeypatch: pytest.MonkeyPatch, misfire: str, expected_count: int
) -> None:
    spec = ScheduleSpec.build(cron="* * * * * *", timezone="Europe/Berlin", misfire=misfire)
    now = T0 + 30 * 86400 + 0.5  # 2.6 million one-second ticks missed
    counter = CountingCroniter(cron_module._croniter)
    monkeypatch.setattr(cron_module, "_croniter", counter)
    ticks = spec.due_ticks(T0 + 1, now)
    assert len(ticks) == expected_count
    assert counter.calls <= expected_count + 2
    if misfire == "all":
        assert ticks == [T0 + 30 * 86400 - 99 + i for i in range(100)]
    else:  # the latest tick is on time, so skip fires it too
        assert ticks == [T0 + 30 * 86400]


def test_interval_bound_after_long_downtime() -> None:
    spec = ScheduleSpec.build(every=1, misfire="all", max_catchup=3)
    assert spec.due_ticks(T0, T0 + 10**9) == [T0 + 10**9 - 2, T0 + 10**9 - 1, T0 + 10**9]


# -- persistence and description ------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec.build(cron="*/5 * * * *", timezone="Europe/Berlin", misfire="all"),
        ScheduleSpec.build(cron="* * * * * */10", misfire="skip", max_catchup=3),
        ScheduleSpec.build(every=timedelta(seconds=90)),
        ScheduleSpec(every=60, grace=2.5),
    ],
)
def test_to_dict_round_trips_through_json(spec: ScheduleSpec) -> None:
    stored = json.loads(json.dumps(spec.to_dict()))
    assert set(stored) == {"cron", "every", "timezone", "misfire", "max_catchup", "grace"}
    assert ScheduleSpec.from_dict(stored) == spec


def test_from_dict_fills_defaults_and_ignores_unknown_keys() -> None:
    spec = ScheduleSpec.from_dict({"cron": "0 * * * *", "added_later": 1})
    assert spec == ScheduleSpec(cron="0 * * * *")


def test_describe() -> None:
    spec = ScheduleSpec.build(cron="*/5 * * * *", timezone="Europe/Berlin")
    assert spec.describe() == "cron '*/5 * * * *' (Europe/Berlin)"
    assert ScheduleSpec.build(every=30).describe() == "every 30s"


def test_croniter_is_loaded_only_by_code_that_uses_a_schedule():
    """A worker or producer without cron does not pay for croniter and dateutil."""
    check = (
        "import sys\n"
        "import skunkqueue.cli, skunkqueue.worker.pool, skunkqueue.scheduler\n"
        "from skunkqueue import SkunkQueue\n"
        "q = SkunkQueue('plain', url='memory://plain')\n"
        "q.event(routes=['a'])(lambda: None)\n"
        "assert 'croniter' not in sys.modules, 'loaded without a schedule'\n"
        "q.event(routes=['a'], name='ticking', cron='* * * * *')(lambda: None)\n"
        "assert 'croniter' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
