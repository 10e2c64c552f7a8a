"""arq (own virtualenv: it pins redis-py < 6): two `arq adapter_arq.WorkerSettings`
processes with arq's defaults (max_jobs 10 per worker, poll_delay 0.5 s, results kept
1 h). Tasks are coroutines; the start record uses the same sync redis-py RPUSH as every
other library. Enqueue: `await pool.enqueue_job(...)`, one producer, one at a time.
Delayed jobs: enqueue_job(..., _defer_until=datetime).
Cron: cron_jobs=[cron(tick)] (arq's defaults: second=0, microsecond=123456, i.e. every
minute at :00.123; unique, so one of the two workers runs it).
"""

import asyncio
import os
import sys
from datetime import datetime, timezone

import common
from arq import create_pool, cron
from arq.connections import RedisSettings

SETTINGS = RedisSettings.from_dsn(os.environ["PEER_URL"])


async def noop(ctx):
    common.stamp()


async def stamp_eta(ctx, eta):
    common.stamp(eta)


async def tick(ctx):
    common.stamp()


class WorkerSettings:
    functions = [noop, stamp_eta]
    redis_settings = SETTINGS
    # Only in the cron scenario: elsewhere a tick would add a stray start record.
    cron_jobs = [cron(tick)] if os.environ.get("PEER_CRON") else []


def run(coro):
    return asyncio.run(coro)


def enqueue_all(n: int) -> None:
    async def go():
        pool = await create_pool(SETTINGS)
        for _ in range(n):
            await pool.enqueue_job("noop")
        await pool.aclose()

    run(go())


def schedule(eta: float) -> None:
    schedule_many([eta])


def schedule_many(etas: list[float]) -> None:
    async def go():
        pool = await create_pool(SETTINGS)
        for eta in etas:
            await pool.enqueue_job(
                "stamp_eta", eta, _defer_until=datetime.fromtimestamp(eta, timezone.utc)
            )
        await pool.aclose()

    run(go())


def main() -> None:
    args = common.parse_args()
    worker = [os.path.join(os.path.dirname(sys.executable), "arq"), "adapter_arq.WorkerSettings"]
    workers = [worker] * args.workers
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        common.emit(common.scenario_drain(enqueue_all, workers, args.n))
    elif args.scenario == "cron":
        common.emit(common.scenario_cron(workers, args.duration))
    else:
        common.emit(
            common.scenario_delayed(
                schedule, workers, args.n, args.spread, args.lead, schedule_many=schedule_many
            )
        )


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_arq

    adapter_arq.main()
