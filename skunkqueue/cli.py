"""``skunq`` (also ``python -m skunkqueue``): run workers and schedulers, look at a queue."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from . import cli_schedules
from .cli_jobs import add_job_commands
from .config import URL_ENV, QueueConfig, redact
from .cron import ScheduleSpec
from .errors import SkunkQueueError
from .model import JobState
from .persistence import Backend, open_backend
from .persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX
from .queue import SkunkQueue
from .schedule_ops import schedule_infos
from .scheduler.ticks import schedule_problem

QUEUE_ENV = "SKUNKQUEUE_QUEUE"
#: A process whose own clock is this far from the store's has it said in ``skunq status``.
CLOCK_NOTE_FROM = 0.05


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--queue",
        default=os.environ.get(QUEUE_ENV, "default"),
        help=f"queue name (default: ${QUEUE_ENV} or 'default')",
    )
    parser.add_argument(
        "--url", default=None, help=f"backend URL (default: ${URL_ENV} or sqlite:///skunkqueue.db)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def _add_imports(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MOD", help=help_text
    )


def _add_leader_ttl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leader-ttl", type=float, default=None, help="scheduler lease TTL in seconds (default 10)"
    )


def _config(args: argparse.Namespace, **extra: Any) -> QueueConfig:
    options = {k: v for k, v in extra.items() if v is not None}
    if args.url:
        options["url"] = args.url
    return QueueConfig.from_kwargs(args.queue, **options)


def _backend(args: argparse.Namespace) -> Backend:
    config = _config(args)
    return open_backend(config.url, config.name)


def _open_queue(args: argparse.Namespace) -> SkunkQueue:
    config = _config(args)
    return SkunkQueue(config.name, url=config.url)


def _import_path() -> None:
    # Like `python -m`, the working directory is importable, so `--import tasks` finds ./tasks.py.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def cmd_work(args: argparse.Namespace) -> int:
    from .worker import WorkerPool

    _import_path()
    cfg = _config(args, lease=args.lease, leader_ttl=args.leader_ttl).__dict__.copy()
    name = cfg.pop("name")
    pool = WorkerPool(
        name,
        args.routes,
        concurrency=args.concurrency,
        imports=args.imports,
        with_scheduler=args.with_scheduler,
        **cfg,
    )
    pool.listen()
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    import signal

    from .scheduler import Scheduler
    from .worker.pool import GRACEFUL_SIGNALS, stop_on_signals

    _import_path()
    cfg = _config(args, leader_ttl=args.leader_ttl).__dict__.copy()
    name = cfg.pop("name")
    scheduler = Scheduler(name, imports=args.imports, **cfg)
    stop_on_signals((*GRACEFUL_SIGNALS, signal.SIGINT), scheduler.stop)
    scheduler.run()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    backend = _backend(args)
    now = backend.now()
    stats = backend.stats(now)
    print(f"queue {backend.queue} on {redact(backend.url)}")
    print(f"wake-ups: {backend.wake_mode}")
    print(f"clock: {backend.clock_source}")
    print("jobs:")
    if not stats.counts:
        print("  (none)")
    for (state, route), count in sorted(stats.counts.items()):
        print(f"  {state:<10} {route:<30} {count}")
    leader = next(iter(backend.leases(SCHEDULER_LEASE, now)), None)
    if leader is None:
        print("leader: none")
    else:
        print(
            f"leader: {leader.owner} (host {leader.info.get('host')}, pid {leader.info.get('pid')}, "
            f"token {leader.token}, lease until {_when(leader.until)}){_clock_note(leader.info)}"
        )
    workers = backend.leases(WORKER_LEASE_PREFIX, now)
    print(f"workers: {len(workers)} live")
    for lease in workers:
        print(
            f"  {lease.owner}  routes={','.join(lease.info.get('routes', []))}  "
            f"host={lease.info.get('host')} pid={lease.info.get('pid')}{_clock_note(lease.info)}"
        )
    print(f"next due: {_when(stats.next_due)}")
    if stats.quarantined:
        print(
            f"WARNING: quarantined records: {stats.quarantined} (malformed: no step acts on "
            "them, and they stay in the counts above; the backend's WARNING log lines name "
            "each one and why)"
        )
    if leader is None and stats.next_due is not None and stats.next_due <= now:
        overdue = now - stats.next_due
        print(
            f"WARNING: no scheduler leads, and jobs have been due for {overdue:.1f} s: delayed "
            "jobs, retries and cron ticks wait until one runs (`skunq work` runs one unless "
            "given --no-scheduler; or start `skunq scheduler`)"
        )
    for schedule in backend.schedules():
        problem = schedule_problem(schedule, now)
        if problem is not None:
            print(f"WARNING: schedule {schedule.name} is broken and never fires: {problem}")
        paused = schedule.state.get("paused")
        if paused:
            note = f": {paused['note']}" if paused.get("note") else ""
            print(f"schedule {schedule.name} is PAUSED since {_when(paused.get('at'))}{note}")
    return 0


def _clock_note(info: dict[str, Any]) -> str:
    """How far a process's own clock is from the store's, where that is worth saying: it
    decides by the store's clock either way, but an operator wants to know."""
    offset = info.get("clock_offset")
    if not isinstance(offset, (int, float)) or abs(offset) < CLOCK_NOTE_FROM:
        return ""
    side = "behind" if offset > 0 else "ahead of"
    return f"  clock {abs(offset):.3f} s {side} the store's"


def cmd_jobs(args: argparse.Namespace) -> int:
    backend = _backend(args)
    jobs = backend.list_jobs(backend.now(), state=args.state, route=args.route, limit=args.limit)
    for job in jobs:
        line = f"{job.id}  {job.state:<10} {job.event}  route={job.route}  eta={_when(job.eta)}  attempts={job.attempts}"
        if job.error:
            line += f"  error={job.error.get('type') or ''}: {job.error.get('message') or job.error.get('reason')}"
        print(line)
    if not jobs:
        print("(no jobs)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    backend = _backend(args)
    failed = 0
    for job_id, done in zip(
        args.job_ids,
        backend.cancel(args.job_ids, backend.now(), args.reason, running=args.running),
        strict=True,
    ):
        if done:
            print(f"cancelled {job_id}")
        else:
            record = backend.get(job_id, backend.now())
            why = f"it is {record.state}" if record else "no such job"
            if record and record.state == JobState.RUNNING:
                why += " (--running stops it)"
            print(f"not cancelled {job_id}: {why}")
            failed += 1
    return 1 if failed else 0


def cmd_schedules(args: argparse.Namespace) -> int:
    backend = _backend(args)
    if not args.remove:
        status = cli_schedules.operate(args, backend)
        if status is not None:
            return status
    if args.remove:
        if backend.remove_schedule(args.remove):
            print(f"removed schedule {args.remove}")
            return 0
        print(f"no schedule named {args.remove}", file=sys.stderr)
        return 1
    schedules = backend.schedules()
    now = backend.now()
    infos = {info.name: info for info in schedule_infos(backend)}
    for schedule in schedules:
        problem = schedule_problem(schedule, now)
        extra = cli_schedules.summary(infos[schedule.name]) if schedule.name in infos else ""
        if problem is not None:
            print(f"{schedule.name}  BROKEN: {problem}  next={_when(schedule.next_fire)}{extra}")
            continue
        spec = ScheduleSpec.from_dict(schedule.spec)
        print(
            f"{schedule.name}  {spec.describe()}  route={schedule.template.get('route')}  "
            f"misfire={spec.misfire}  revision={schedule.revision}  "
            f"next={_when(schedule.next_fire)}{extra}"
        )
    if not schedules:
        print("(no schedules)")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    backend = _backend(args)
    now = backend.now()
    purged = 0
    while True:
        jobs = backend.list_jobs(now, state="queued", route=args.route, limit=1000)
        if not jobs:
            break
        purged += sum(backend.cancel([j.id for j in jobs], now, f"purged from route {args.route}"))
    print(f"purged {purged} queued jobs from route {args.route} (now cancelled, reason 'purged')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skunq", description="SkunkQueue: run workers and schedulers, inspect queues."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    work = sub.add_parser("work", help="run a worker pool")
    _add_common(work)
    work.add_argument(
        "-r",
        "--routes",
        nargs="+",
        required=True,
        help="routes to serve; one worker process per entry (foo foo bar = 3 workers)",
    )
    _add_imports(work, "module registering events; repeatable")
    work.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="run N processes, each serving all the routes given",
    )
    work.add_argument(
        "--no-scheduler",
        dest="with_scheduler",
        action="store_false",
        help="run no scheduler candidate in this pool (delayed jobs, retries and cron then "
        "need a `skunq scheduler` elsewhere)",
    )
    work.add_argument(
        "--with-scheduler",
        dest="with_scheduler",
        action="store_true",
        help=argparse.SUPPRESS,  # the default since every pool runs one; kept for old scripts
    )
    work.add_argument(
        "--lease", type=float, default=None, help="seconds a job lease lasts (default 30)"
    )
    _add_leader_ttl(work)
    work.set_defaults(func=cmd_work)

    sched = sub.add_parser("scheduler", help="run a scheduler (many may run; one leads)")
    _add_common(sched)
    _add_imports(sched, "module registering cron events; repeatable")
    _add_leader_ttl(sched)
    sched.set_defaults(func=cmd_scheduler)

    status = sub.add_parser(
        "status", help="counts per state and route, workers, leader, next due time"
    )
    _add_common(status)
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list jobs with their full ids")
    _add_common(jobs)
    jobs.add_argument(
        "--state",
        default=None,
        choices=[state.value for state in JobState],
        help="only jobs in this state",
    )
    jobs.add_argument("--route", default=None, help="only jobs on this route")
    jobs.add_argument("--limit", type=int, default=100)
    jobs.set_defaults(func=cmd_jobs)

    cancel = sub.add_parser(
        "cancel", help="cancel jobs that have not started (or, with --running, that run)"
    )
    _add_common(cancel)
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    cancel.add_argument(
        "--reason", default="cancelled from the CLI", help="kept in the job's error"
    )
    cancel.add_argument(
        "--running",
        action="store_true",
        help="cancel running jobs too: their workers stop them within about a third of the lease",
    )
    cancel.set_defaults(func=cmd_cancel)

    add_job_commands(sub, _add_common, _open_queue)

    schedules = sub.add_parser(
        "schedules",
        help="list stored cron/interval schedules, show one, or pause, resume, trigger, "
        "backfill or remove one",
    )
    _add_common(schedules)
    cli_schedules.add_arguments(schedules)
    schedules.set_defaults(func=cmd_schedules)

    purge = sub.add_parser("purge", help="cancel every queued job on a route")
    _add_common(purge)
    purge.add_argument("-r", "--route", required=True)
    purge.set_defaults(func=cmd_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except SkunkQueueError as exc:
        print(f"skunq: {exc}", file=sys.stderr)
        return 2
