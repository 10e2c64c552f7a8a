"""Celery: Celery('bench', broker=redis://, backend=redis://), results stored in Redis.
Worker: one `celery worker` with the default prefork pool and --concurrency 2 (2 child
processes), --loglevel WARNING, otherwise defaults (mingle, gossip, heartbeat on; prefetch
multiplier 4). Delayed jobs: apply_async(eta=...), held by the worker until due.
Cron: beat_schedule with crontab() (every minute), one `celery beat` process beside the
worker (its default PersistentScheduler, schedule file in a temp dir).
"""

import os
import sys
import tempfile
from datetime import datetime, timezone

import common
from celery import Celery
from celery.schedules import crontab

app = Celery("bench", broker=os.environ["PEER_URL"], backend=os.environ["PEER_URL"])


@app.task(name="bench.noop")
def noop():
    common.stamp()


@app.task(name="bench.stamp")
def stamp_eta(eta):
    common.stamp(eta)


@app.task(name="bench.tick")
def tick():
    common.stamp()


app.conf.beat_schedule = {"tick": {"task": "bench.tick", "schedule": crontab()}}


def enqueue_all(n: int) -> None:
    for _ in range(n):
        noop.delay()


def schedule(eta: float) -> None:
    stamp_eta.apply_async((eta,), eta=datetime.fromtimestamp(eta, timezone.utc))


def main() -> None:
    args = common.parse_args()
    celery = [sys.executable, "-m", "celery", "-A", "adapter_celery"]
    pool = ["--pool", "solo"] if args.variant == "solo" else ["--concurrency", str(args.workers)]
    worker = [*celery, "worker", *pool, "--loglevel", "WARNING"]
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(enqueue_all, [worker], args.n))
    elif args.scenario == "cron":
        schedule_file = os.path.join(tempfile.mkdtemp(prefix="celerybeat-"), "schedule")
        beat = [*celery, "beat", "--schedule", schedule_file, "--loglevel", "WARNING"]
        common.emit(common.scenario_cron([worker, beat], args.duration))
    else:
        common.emit(common.scenario_delayed(schedule, [worker], args.n, args.spread, args.lead))


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_celery

    adapter_celery.main()
