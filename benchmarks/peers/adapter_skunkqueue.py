"""SkunkQueue on Redis: SkunkQueue('bench', url=...), one route 'bench'.

Workers: one `skunq work` pool (python -m skunkqueue work) with 2 worker processes
(`-r bench bench`), --log-level WARNING, default lease (30 s); results stored.
Delayed jobs: fire_at(), promoted by one `skunq scheduler` process.
Enqueue: fire() one job per call, or fire_many() in batches (--batch 500).
Cron: an event with cron='* * * * *', ticked by the same `skunq scheduler`.
The store is whatever the harness's URL names (redis://... or sqlite:///...).
"""

import os
import sys
from datetime import datetime, timezone

import common

from skunkqueue import SkunkQueue

queue = SkunkQueue("bench", url=os.environ["PEER_URL"])


@queue.event(routes=["bench"], name="bench.noop")
def noop():
    common.stamp()


@queue.event(routes=["bench"], name="bench.stamp")
def stamp_eta(eta):
    common.stamp(eta)


if os.environ.get("PEER_CRON"):
    # Only in the cron scenario: elsewhere a tick would add a stray start record.

    @queue.event(routes=["bench"], name="bench.tick", cron="* * * * *")
    def tick():
        common.stamp()


def enqueue_all_single(n: int) -> None:
    for _ in range(n):
        noop.fire()


def make_enqueue_batched(batch: int):
    def enqueue_all(n: int) -> None:
        for offset in range(0, n, batch):
            noop.fire_many([()] * min(batch, n - offset))

    return enqueue_all


def schedule(eta: float) -> None:
    stamp_eta.fire_at(datetime.fromtimestamp(eta, timezone.utc), eta)


def skunq(*argv: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "skunkqueue",
        *argv,
        "-q",
        "bench",
        "--url",
        os.environ["PEER_URL"],
        "--import",
        "adapter_skunkqueue",
        "--log-level",
        "WARNING",
    ]


def main() -> None:
    args = common.parse_args()
    pool = skunq("work", "-r", *(["bench"] * args.workers))
    if args.scenario == "enqueue":
        fn = make_enqueue_batched(args.batch) if args.batch else enqueue_all_single
        common.emit(common.scenario_enqueue(fn, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(make_enqueue_batched(500), [pool], args.n))
    elif args.scenario == "cron":
        common.emit(common.scenario_cron([pool, skunq("scheduler")], args.duration))
    else:
        common.emit(
            common.scenario_delayed(
                schedule, [pool, skunq("scheduler")], args.n, args.spread, args.lead
            )
        )


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_skunkqueue

    adapter_skunkqueue.main()
