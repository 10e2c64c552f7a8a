"""Dramatiq: RedisBroker(url=...), actors on queue 'bench'. Worker: one `dramatiq`
command with --processes 2 --threads 8 (8 threads is its default; processes default to
the CPU count, 2 here). No results middleware (Dramatiq stores no results by default).
Delayed jobs: send_with_options(delay=ms), moved from the delay queue by the workers.
"""

import os
import sys
import time

import common
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["PEER_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop():
    common.stamp()


@dramatiq.actor(queue_name="bench", max_retries=0)
def stamp_eta(eta):
    common.stamp(eta)


def enqueue_all(n: int) -> None:
    for _ in range(n):
        noop.send()


def schedule(eta: float) -> None:
    stamp_eta.send_with_options(args=(eta,), delay=max(0, int((eta - time.time()) * 1000)))


def main() -> None:
    args = common.parse_args()
    worker = [
        os.path.join(os.path.dirname(sys.executable), "dramatiq"),
        "adapter_dramatiq",
        "--processes",
        str(args.workers),
        "--threads",
        "8",
    ]
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(enqueue_all, [worker], args.n))
    else:
        common.emit(common.scenario_delayed(schedule, [worker], args.n, args.spread, args.lead))


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_dramatiq

    adapter_dramatiq.main()
