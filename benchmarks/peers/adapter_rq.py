"""RQ: Queue('bench') on redis-py; `rq worker` processes (2 of them), each with the
default worker class (the forking Worker: one fork per job), --with-scheduler so that
enqueue_at() jobs are moved to the queue (RQ's scheduler runs in one of the workers, the
one holding its lock, and checks every second by default). `--variant simple` runs
SimpleWorker instead (no fork; RQ's fastest documented configuration). Results are
stored by RQ (default result_ttl).
Cron: `rq cron adapter_rq_cron` (RQ's CronScheduler, cron='* * * * *') beside the workers.
"""

import os
import sys
from datetime import datetime, timezone

import common
from redis import Redis
from rq import Queue


def noop():
    common.stamp()


def stamp_eta(eta):
    common.stamp(eta)


def tick():
    common.stamp()


def queue() -> Queue:
    return Queue("bench", connection=Redis.from_url(os.environ["PEER_URL"]))


def main() -> None:
    args = common.parse_args()
    q = queue()

    def enqueue_all(n: int) -> None:
        for _ in range(n):
            q.enqueue(noop)

    def schedule(eta: float) -> None:
        q.enqueue_at(datetime.fromtimestamp(eta, timezone.utc), stamp_eta, eta)

    rq_bin = os.path.join(os.path.dirname(sys.executable), "rq")
    worker = [
        rq_bin,
        "worker",
        "bench",
        "--url",
        os.environ["PEER_URL"],
        "--quiet",
        "--logging_level",
        "WARNING",
    ]
    if args.variant == "simple":
        worker += ["--worker-class", "rq.worker.SimpleWorker"]
    workers = [worker] * args.workers
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(enqueue_all, workers, args.n))
    elif args.scenario == "cron":
        cron = [
            rq_bin,
            "cron",
            "adapter_rq_cron",
            "--url",
            os.environ["PEER_URL"],
            "--path",
            os.path.dirname(os.path.abspath(__file__)),
            "--logging-level",
            "warning",
        ]
        common.emit(common.scenario_cron([*workers, cron], args.duration))
    else:
        workers = [w + ["--with-scheduler"] for w in workers]
        common.emit(common.scenario_delayed(schedule, workers, args.n, args.spread, args.lead))


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_rq

    adapter_rq.main()
