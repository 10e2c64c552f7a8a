"""Huey: RedisHuey('bench', url=...) with its defaults (results stored; Huey does not
store None results), or SqliteHuey('bench', filename=...) when the harness's URL is
sqlite:///PATH. Consumer: one `huey_consumer` with `-k process -w 2` (2 worker
processes, so both cores are used; Huey's default is 1 worker thread) and the default
scheduler interval (1 s) for schedule(delay=) jobs and periodic tasks.
Cron: @huey.periodic_task(crontab()) (every minute), run by the same consumer.
"""

import os
import sys
import time

import common
from huey import RedisHuey, SqliteHuey, crontab

URL = os.environ["PEER_URL"]
if URL.startswith("sqlite:///"):
    huey = SqliteHuey("bench", filename=URL[len("sqlite:///") :])
else:
    huey = RedisHuey("bench", url=URL)


@huey.task()
def noop():
    common.stamp()


@huey.task()
def stamp_eta(eta):
    common.stamp(eta)


if os.environ.get("PEER_CRON"):
    # Only in the cron scenario: elsewhere a tick would add a stray start record.

    @huey.periodic_task(crontab())
    def tick():
        common.stamp()


def enqueue_all(n: int) -> None:
    for _ in range(n):
        noop()


def schedule(eta: float) -> None:
    stamp_eta.schedule(args=(eta,), delay=eta - time.time())


def main() -> None:
    args = common.parse_args()
    consumer = [
        os.path.join(os.path.dirname(sys.executable), "huey_consumer"),
        "adapter_huey.huey",
        "-k",
        "process",
        "-w",
        str(args.workers),
        "--quiet",
    ]
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(enqueue_all, [consumer], args.n))
    elif args.scenario == "cron":
        common.emit(common.scenario_cron([consumer], args.duration))
    else:
        common.emit(common.scenario_delayed(schedule, [consumer], args.n, args.spread, args.lead))


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_huey

    adapter_huey.main()
