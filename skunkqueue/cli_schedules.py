"""``skunq schedules``: operating schedules from the command line (pause, resume, run now,
backfill) and showing one schedule whole. The one-line listing lives in ``cli.py``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from . import schedule_ops
from .persistence import Backend
from .schedule_ops import ScheduleInfo, TickInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", default=None, metavar="NAME", help="show this schedule whole"
    )
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--remove", metavar="NAME", default=None)
    act.add_argument("--pause", metavar="NAME", default=None, help="skip its ticks until resumed")
    act.add_argument("--resume", metavar="NAME", default=None)
    act.add_argument("--trigger", metavar="NAME", default=None, help="run it once now")
    act.add_argument(
        "--backfill", metavar="NAME", default=None, help="run its never-run ticks in a range"
    )
    parser.add_argument("--note", default=None, help="why it is paused (with --pause)")
    parser.add_argument(
        "--from",
        dest="start",
        type=instant,
        default=None,
        metavar="T",
        help="ISO-8601, with a zone",
    )
    parser.add_argument(
        "--to", dest="end", type=instant, default=None, metavar="T", help="ISO-8601, with a zone"
    )


def instant(text: str) -> datetime:
    """An ISO-8601 time with its zone (``Z`` or an offset): a zoneless one would be a guess."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z (UTC) or an offset such as +01:00"
        )
    return value


def operate(args: argparse.Namespace, backend: Backend) -> int | None:
    """Carry out the operation asked for, if any, and return the exit status; ``None``
    when none was asked for (the caller lists)."""
    if (args.start or args.end) and not args.backfill:
        return _usage("--from and --to go with --backfill NAME")
    if args.note is not None and not args.pause:
        return _usage("--note goes with --pause NAME")
    try:
        if args.pause:
            changed = schedule_ops.pause(backend, args.pause, args.note)
            print(f"{'paused' if changed else 'already paused:'} {args.pause}")
        elif args.resume:
            changed = schedule_ops.resume(backend, args.resume)
            print(f"{'resumed' if changed else 'not paused:'} {args.resume}")
        elif args.trigger:
            job_id = schedule_ops.trigger(backend, args.trigger)
            print(f"triggered {args.trigger}: job {job_id}")
        elif args.backfill:
            if args.start is None or args.end is None:
                return _usage("--backfill NAME needs --from T and --to T")
            added = schedule_ops.backfill(backend, args.backfill, args.start, args.end)
            print(f"backfill of {args.backfill}: {added} never-run ticks requested")
        elif args.name:
            [info] = [i for i in schedule_ops.schedule_infos(backend) if i.name == args.name] or [
                None
            ]
            if info is None:
                return _usage(f"no schedule named {args.name}", status=1)
            print("\n".join(show(info)))
        else:
            return None
    except (ValueError, TypeError) as exc:  # a bad range: said in one line, like a bad flag
        return _usage(str(exc))
    return 0


def _usage(message: str, status: int = 2) -> int:
    print(f"skunq schedules: {message}", file=sys.stderr)
    return status


def summary(info: ScheduleInfo) -> str:
    """What the one-line listing adds after a schedule's own fields."""
    parts = []
    if info.last_ticks:
        last = info.last_ticks[-1]
        parts.append(f"last={last.kind}:{_outcome(last)}@{_iso(last.tick)}")
    if info.paused:
        parts.append("PAUSED" + (f": {info.note}" if info.note else ""))
    return ("  " + "  ".join(parts)) if parts else ""


def show(info: ScheduleInfo) -> list[str]:
    """One schedule, whole, for a reader."""
    lines = [
        f"{info.name}  {info.expression}  ({info.timezone})  route={info.route}  "
        f"misfire={info.misfire}  jitter={info.jitter:g}s  overlap={info.overlap}  "
        f"concurrency={info.concurrency or '-'}  revision={info.revision}"
    ]
    if info.unfinished_runs:
        lines.append(f"  unfinished runs: {', '.join(info.unfinished_runs)}")
    if info.problem:
        lines.append(f"  BROKEN: {info.problem}")
    if info.paused:
        since = _iso(info.paused_at) if info.paused_at else "?"
        lines.append(f"  PAUSED since {since}" + (f": {info.note}" if info.note else ""))
    lines.append("  next: " + ", ".join(_iso(t) for t in info.next_fires))
    if info.pending_triggers or info.pending_backfill:
        ranges = ", ".join(f"{_iso(a)} .. {_iso(b)}" for a, b in info.pending_backfill or [])
        lines.append(
            f"  pending: {info.pending_triggers} runs asked for now"
            + (f"; backfill of {ranges}" if ranges else "")
        )
    lines.append("  last ticks:" if info.last_ticks else "  last ticks: none yet")
    for tick in info.last_ticks:
        late = "" if tick.lateness is None else f"  late {tick.lateness:.3f}s"
        more = f" x{tick.count} until {_iso(tick.until)}" if tick.until else ""
        missed = f"  ({tick.missed} missed before it)" if tick.missed else ""
        jobs = f"  {tick.job_ids[0]}" if tick.job_ids else ""
        lines.append(
            f"    {_iso(tick.tick)}  {tick.kind:<8} {_outcome(tick)}{more}{late}{missed}{jobs}"
        )
    return lines


def _outcome(tick: TickInfo) -> str:
    return f"skipped ({tick.reason})" if tick.outcome == "skipped" else tick.outcome


def _iso(when: datetime | None) -> str:
    return "-" if when is None else when.isoformat(timespec="seconds")
