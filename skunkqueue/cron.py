"""When a cron or interval schedule ticks, and which ticks to fire after a delay.

croniter walks naive wall-clock time; this module maps wall times to instants itself, so
the DST rules are ours, not whatever croniter's version does:

* a wall time skipped by a spring-forward fires once, at the transition;
* a wall time repeated by a fall-back fires once, at its first occurrence.

Interval schedules tick at whole multiples of ``every`` since the Unix epoch, so every
process agrees on the ticks without a stored anchor. Ticks are whole seconds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .checks import seconds
from .errors import ConfigurationError

MISFIRE_POLICIES = ("coalesce", "all", "skip")
#: What a tick does while an earlier run is unfinished (``scheduler/overlap.py``).
OVERLAP_POLICIES = ("allow", "skip", "buffer_one", "buffer_all", "cancel_other")
#: Ticks a cron's jitter is checked against (see ``ScheduleSpec._check_jitter_fits``).
JITTER_SAMPLE = 200

_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated cron or interval schedule; ``to_dict`` is what ``ScheduleRecord.spec`` holds.

    ``cron`` takes 5 fields, or 6 with seconds last (``'* * * * * */10'``), or an
    ``@hourly``-style alias. Constructing one validates it and raises ``ConfigurationError``.
    """

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    misfire: str = "coalesce"
    max_catchup: int = 100
    grace: float = 1.0
    #: Seconds each tick's job may be delayed by, by an amount fixed per tick (``delay``).
    jitter: float = 0.0
    #: One of ``OVERLAP_POLICIES``.
    overlap: str = "allow"

    def __post_init__(self) -> None:
        # Validation lives here, not in build, so specs read back by from_dict are checked too.
        if (self.cron is None) == (self.every is None):
            given = "both" if self.cron is not None else "neither"
            raise ConfigurationError(
                f"a schedule needs exactly one of cron= or every=, got {given}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                f"unknown time zone {self.timezone!r}: use an IANA name such as 'Europe/Berlin'"
            ) from None
        if self.cron is not None:
            _check_cron(self.cron)
        elif not _is_number(self.every):
            raise ConfigurationError(f"every= must be seconds or a timedelta, not {self.every!r}")
        # Fractional intervals would give tick instants (and so job ids) with float noise.
        elif not math.isfinite(self.every) or self.every < 1 or self.every % 1:
            raise ConfigurationError(f"every= must be whole seconds >= 1, got {self.every!r}")
        else:
            object.__setattr__(self, "every", float(self.every))
        if self.misfire not in MISFIRE_POLICIES:
            raise ConfigurationError(f"misfire={self.misfire!r} is not one of {MISFIRE_POLICIES}")
        if not _is_number(self.max_catchup, int) or self.max_catchup < 1:
            raise ConfigurationError(
                f"max_catchup must be an integer >= 1, not {self.max_catchup!r}"
            )
        seconds("grace", self.grace, zero=True)
        object.__setattr__(self, "jitter", seconds("jitter", self.jitter, zero=True))
        if not isinstance(self.overlap, str) or self.overlap not in OVERLAP_POLICIES:
            raise ConfigurationError(
                f"overlap={self.overlap!r} is not one of {', '.join(map(repr, OVERLAP_POLICIES))}"
            )

    @classmethod
    def build(
        cls,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: Any = None,
        misfire: str = "coalesce",
        max_catchup: int = 100,
        grace: float | timedelta = 1.0,
        jitter: float | timedelta | None = None,
        overlap: str = "allow",
    ) -> ScheduleSpec:
        """The spec for a decorator's arguments; ``timezone`` may be a name or a tzinfo,
        ``every``, ``grace`` and ``jitter`` seconds or a timedelta."""
        if isinstance(cron, str):
            cron = " ".join(cron.split())
        if isinstance(every, timedelta):
            every = every.total_seconds()
        if isinstance(grace, timedelta):
            grace = grace.total_seconds()
        if isinstance(jitter, timedelta):
            jitter = jitter.total_seconds()
        if jitter is not None:
            seconds("jitter", jitter)  # given, it must spread something: 0 is a mistake
        spec = cls(
            cron, every, _zone_name(timezone), misfire, max_catchup, grace, jitter or 0.0, overlap
        )
        spec._check_jitter_fits()
        return spec

    def _check_jitter_fits(self) -> None:
        """Jitter must stay below the shortest time between two ticks, so a tick's job is
        always due before the next tick's nominal instant: runs keep the timetable's
        order, and jitter alone never makes one tick's run overlap the next one's. For
        a cron, the shortest gap among its first ``JITTER_SAMPLE`` ticks of 2001 (a
        fixed sample, so the check is the same on every host and at every import)."""
        if not self.jitter:
            return
        if self.every is not None:
            shortest = self.every
        else:
            tick = float(_instant(ZoneInfo(self.timezone), datetime(2001, 1, 1)))
            shortest = math.inf
            for _ in range(JITTER_SAMPLE):
                following = self.next_after(tick)
                shortest, tick = min(shortest, following - tick), following
        if self.jitter >= shortest:
            raise ConfigurationError(
                f"jitter must be shorter than the time between two ticks ({shortest:g} s), "
                f"not {self.jitter:g} s: a tick's run must be due before the next tick"
            )

    def delay(self, name: str, tick: float) -> float:
        """How long the job of schedule ``name``'s ``tick`` waits past it: in
        ``[0, jitter)``, drawn from a hash of (name, tick), so every leader, and a
        successor firing the same tick, computes the same eta."""
        if not self.jitter:
            return 0.0
        digest = hashlib.sha256(f"{name}@{tick:.0f}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 * self.jitter

    def to_dict(self) -> dict[str, Any]:
        # No jitter is left out: a schedule stored before jitter existed keeps comparing
        # equal, so upgrading does not count as a new expression (which resets next_fire).
        # The same for the default overlap policy.
        found = asdict(self)
        if not self.jitter:
            del found["jitter"]
        if self.overlap == "allow":
            del found["overlap"]
        return found

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScheduleSpec:
        """Inverse of ``to_dict``; unknown keys are ignored so older code reads newer records."""
        if not isinstance(d, Mapping):
            raise ConfigurationError(f"schedule spec must be a mapping, not {d!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        if self.every is not None:
            return f"every {int(self.every)}s"
        return f"cron {self.cron!r} ({self.timezone})"

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``."""
        # Ticks are whole seconds, so "after t" and "after floor(t)" are the same set.
        return float(self._next_tick(math.floor(t)))

    def due_ticks(self, next_fire: float, now: float) -> list[float]:
        """The ticks in ``[next_fire, now]`` to fire now, oldest first, per ``misfire``.

        A tick before ``now - grace`` was missed. ``all`` fires every due tick (the last
        ``max_catchup``), ``coalesce`` only the latest, ``skip`` only those on time (at
        most ``max_catchup``). Work is bounded by the number of ticks returned, however
        long the downtime, because ticks are walked backwards from ``now``.
        """
        last = math.floor(now)
        first = self._next_tick(math.ceil(next_fire) - 1)
        if first > last:
            return []
        lowest, limit = first, self.max_catchup
        if self.misfire == "coalesce":
            limit = 1
        elif self.misfire == "skip":
            lowest = max(first, math.ceil(now - self.grace))
        ticks: list[float] = []
        tick = self._last_tick(last)
        while tick >= lowest and len(ticks) < limit:
            ticks.append(float(tick))
            tick = self._last_tick(tick - 1)
        ticks.reverse()
        return ticks

    def ticks_between(self, lo: float, hi: float, limit: int) -> Iterator[float]:
        """The ticks in ``[lo, hi)``, oldest first, at most ``limit``: what calling
        ``next_after`` from ``lo`` gives, without building a croniter per tick (a
        backfill walks up to 100,000 of them)."""
        if self.every is not None:
            every = int(self.every)
            tick, count = math.ceil(lo / every) * every, 0
            while tick < hi and count < limit:
                yield float(tick)
                tick, count = tick + every, count + 1
            return
        zone = ZoneInfo(self.timezone)
        start = math.ceil(lo) - 1
        walls = _croniter(self.cron, _cursor(zone, start))
        last, count = start, 0
        while count < limit:
            # Skipped walls (spring-forward) all map to the transition and repeated ones
            # to their first occurrence, as in _instant: an instant seen already is no tick.
            tick = _instant(zone, walls.get_next(datetime))
            if tick <= last:
                continue
            if tick >= hi:
                return
            yield float(tick)
            last, count = tick, count + 1

    def _next_tick(self, s: int) -> int:
        """The first tick > ``s``."""
        if self.every is not None:
            return (s // int(self.every) + 1) * int(self.every)
        zone = ZoneInfo(self.timezone)
        wall = _croniter(self.cron, _cursor(zone, s)).get_next(datetime)
        return _instant(zone, wall)

    def _last_tick(self, s: int) -> int:
        """The last tick <= ``s``."""
        if self.every is not None:
            return s // int(self.every) * int(self.every)
        zone = ZoneInfo(self.timezone)
        wall = _croniter(self.cron, _cursor(zone, s) + _SECOND).get_prev(datetime)
        return _instant(zone, wall)


def _check_cron(expr: Any) -> None:
    if not isinstance(expr, str):
        raise ConfigurationError(f"cron= must be a string, not {expr!r}")
    # croniter also takes a 7th (year) field; we promise 5 or 6, so refuse the rest up front.
    if not expr.startswith("@") and len(expr.split()) not in (5, 6):
        raise ConfigurationError(
            f"invalid cron expression {expr!r}: expected 5 fields, or 6 with seconds last"
        )
    try:
        # Finding one tick also catches expressions that parse but never match (Feb 31).
        _croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"invalid cron expression {expr!r}: {exc}") from None


def _is_number(value: Any, kind: type | tuple[type, ...] = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _zone_name(tz: Any) -> str:
    if tz is None:
        return "UTC"
    if isinstance(tz, str):
        return tz
    # ZoneInfo names itself by .key, pytz by .zone; keeping only the name keeps specs
    # JSON-safe and pytz optional.
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if name is None and tz == dt_timezone.utc:
        name = "UTC"
    if not isinstance(name, str):
        raise ConfigurationError(f"time zone {tz!r} has no IANA name; pass e.g. 'Europe/Berlin'")
    return name


def _wall(zone: ZoneInfo, ts: int) -> datetime:
    return datetime.fromtimestamp(ts, zone).replace(tzinfo=None)


def _transition(zone: ZoneInfo, lo: int, hi: int) -> int:
    """The first second in ``(lo, hi]`` on the UTC offset in force at ``hi``."""
    # Callers pass a range no wider than one transition (hours), and real zones change
    # offset months apart, so there is exactly one change to find.
    target = datetime.fromtimestamp(hi, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if datetime.fromtimestamp(mid, zone).utcoffset() == target else (mid, hi)
    return hi


def _instant(zone: ZoneInfo, wall: datetime) -> int:
    """When wall time ``wall`` fires: its first occurrence, or the transition that skips it."""
    first = int(wall.replace(tzinfo=zone).timestamp())  # fold=0 is the earlier occurrence
    if _wall(zone, first) == wall:
        return first
    # In a gap, fold=0 applies the old offset (landing after the jump) and fold=1 the
    # new one (landing before it), so the jump lies between the two.
    return _transition(zone, int(wall.replace(tzinfo=zone, fold=1).timestamp()), first)


def _croniter(expression: str, start: datetime) -> Any:
    # Imported on first use: croniter brings python-dateutil, about 1 MiB in every process,
    # which a worker whose code defines no cron schedule never needs.
    from croniter import croniter

    return croniter(expression, start)


def _cursor(zone: ZoneInfo, s: int) -> datetime:
    """The wall time w such that ticks at walls <= w fire at or before ``s``, later ones after."""
    local = datetime.fromtimestamp(s, zone)
    if not local.fold:
        return local.replace(tzinfo=None)
    # s is in the second pass of a repeated hour; its walls all fired on the first pass,
    # so the cursor is the last wall before the clocks went back.
    repeat = local.replace(fold=0).utcoffset() - local.utcoffset()  # type: ignore[operator]
    return _wall(zone, _transition(zone, s - int(repeat.total_seconds()), s) - 1)
