"""The ``skunq`` commands about single jobs: ``show`` (the whole record) and ``retry``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .errors import JobNotRetryable
from .jobinfo import JobInfo
from .model import RETRYABLE
from .queue import SkunkQueue

#: Width of the labels in ``skunq show``.
LABEL = 13


def add_job_commands(
    sub: Any,
    add_common: Callable[[argparse.ArgumentParser], None],
    open_queue: Callable[[argparse.Namespace], SkunkQueue],
) -> None:
    """Add ``show`` and ``retry`` to the ``skunq`` subcommands ``sub``."""
    show = sub.add_parser("show", help="one job's whole record: arguments, result, errors, times")
    add_common(show)
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="the record as JSON, for machines")
    show.set_defaults(func=lambda args: cmd_show(args, open_queue(args)))

    retry = sub.add_parser(
        "retry", help="put jobs in error or cancelled back on their route (attempts kept)"
    )
    add_common(retry)
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    retry.add_argument(
        "--all", action="store_true", help="every job in --state, filtered by the options below"
    )
    retry.add_argument(
        "--state",
        default=None,
        choices=sorted(state.value for state in RETRYABLE),
        help="with --all: the state to retry from (default: error)",
    )
    retry.add_argument("--event", default=None, help="with --all: only jobs of this event")
    retry.add_argument("--route", default=None, help="with --all: only jobs on this route")
    retry.add_argument(
        "--since",
        default=None,
        type=_iso_time,
        metavar="ISO-TIME",
        help="with --all: only jobs that finished at or after this time (ISO-8601; "
        "with an offset such as Z or +02:00 it is exact, without one it is local time)",
    )
    retry.set_defaults(func=lambda args: cmd_retry(args, open_queue(args), retry))


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None


def cmd_show(args: argparse.Namespace, queue: SkunkQueue) -> int:
    try:
        info = queue.handle(args.job_id).info()
    finally:
        queue.close()
    if info is None:
        print(f"skunq: no such job {args.job_id} (unknown, or expired)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    else:
        print(describe(info))
    return 0


def describe(info: JobInfo) -> str:
    """The record as an operator reads it: fields, then the error, then earlier errors."""
    data = info.to_dict()
    lines = [f"job {info.id}"]

    def field(label: str, value: Any) -> None:
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"  {label:<{LABEL}}{text}")

    field("event", info.event)
    field("route", info.route)
    field("state", str(info.state))
    field("attempts", info.attempts)
    field("deliveries", f"{info.deliveries} (lost deliveries allowed: {info.max_deliveries})")
    for name in ("owner", "schedule", "parent", "timeout", "retry"):
        field(name, data[name])
    for name in ("created_at", "eta", "started_at", "finished_at", "expires_at", "lease_until"):
        field(name, data[name])
    if info.undecoded is not None:
        field("payload", f"{info.serializer}, {info.undecoded}")
    else:
        field("args", data["args"])
        field("kwargs", data["kwargs"])
        if info.result is not None:
            field("result", data["result"])
    if info.error is not None:
        lines.append("  error")
        lines += _error_lines(info.error, "    ")
    if info.history:
        lines.append(f"  history      {len(info.history)} earlier error(s), oldest first")
        for entry in info.history:
            finished = entry.get("finished_at")
            when = "" if finished is None else f", finished {finished.isoformat()}"
            lines.append(f"    attempt {entry.get('attempt')}: {entry.get('state')}{when}")
            lines += _error_lines(entry.get("error") or {}, "      ")
    return "\n".join(lines)


def _error_lines(error: dict[str, Any], indent: str) -> list[str]:
    head = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
    lines = [indent + head] if head else []
    if error.get("reason"):
        lines.append(f"{indent}reason: {error['reason']}")
    if error.get("traceback"):
        lines += [indent + line for line in str(error["traceback"]).rstrip("\n").splitlines()]
    for key, value in error.items():  # anything else a store or a worker put there
        if key not in ("type", "message", "reason", "traceback"):
            lines.append(f"{indent}{key}: {json.dumps(value)}")
    return lines


def cmd_retry(args: argparse.Namespace, queue: SkunkQueue, parser: argparse.ArgumentParser) -> int:
    try:
        if args.all == bool(args.job_ids):
            parser.error("give JOB_IDs, or --all (with --state, --event, --route, --since)")
        if not args.all and any(
            v is not None for v in (args.state, args.event, args.route, args.since)
        ):
            parser.error("--state, --event, --route and --since go with --all")
        if args.all:
            state = args.state or "error"
            count = queue.retry_all(state, event=args.event, route=args.route, since=args.since)
            print(f"retried {count} job(s) in {state}{_filters(args)}")
            return 0
        refused = 0
        for job_id in args.job_ids:
            try:
                queue.retry(job_id)
            except JobNotRetryable as exc:
                print(f"skunq: {exc}", file=sys.stderr)
                refused += 1
            else:
                print(f"retried {job_id}: queued on its route")
        return 1 if refused else 0
    finally:
        queue.close()


def _filters(args: argparse.Namespace) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (("event", args.event), ("route", args.route), ("since", args.since))
        if value is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""
