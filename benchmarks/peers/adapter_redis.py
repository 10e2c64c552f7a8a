"""The ceiling: bare redis-py, no library. Producer: one LPUSH per job (a small JSON
payload with an id). Consumer: one process per worker, each a loop of BLMOVE (queue ->
its own processing list), run the task, HSET the result, LREM from the processing list.
"""

import json
import os
import sys
import uuid

import common
import redis

QUEUE = "ceiling:queue"


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["PEER_URL"])


def payload() -> str:
    return json.dumps({"id": uuid.uuid4().hex, "task": "noop", "args": []})


def consume() -> None:
    r = client()
    processing = f"ceiling:processing:{os.getpid()}"
    while True:
        raw = r.blmove(QUEUE, processing, 1, "RIGHT", "LEFT")
        if raw is None:
            continue
        job = json.loads(raw)
        common.stamp()  # the task: a no-op that records its start
        r.hset("ceiling:results", job["id"], "null")
        r.lrem(processing, 1, raw)


def enqueue_all(n: int) -> None:
    r = client()
    for _ in range(n):
        r.lpush(QUEUE, payload())


def main() -> None:
    if sys.argv[1:2] == ["consume"]:
        return consume()
    args = common.parse_args()
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        worker = [sys.executable, __file__, "consume"]
        common.emit(common.scenario_drain(enqueue_all, [worker] * args.workers, args.n))
    else:
        raise SystemExit("the ceiling has no delayed jobs")


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_redis

    adapter_redis.main()
