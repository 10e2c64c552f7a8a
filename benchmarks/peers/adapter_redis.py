"""The ceiling: bare redis-py, no library. Producer: one LPUSH per job (a small JSON
payload with an id). Consumer: one process per worker, each a loop of BLMOVE (queue ->
its own processing list), run the task, HSET the result, LREM from the processing list.

`--variant pipelined`: the same reliable-queue steps, batched the way a library can batch
them: one pipeline of up to 100 LMOVEs (a BLMOVE when the queue was empty), the tasks,
then one pipeline of their HSETs and LREMs. This one is the drain ceiling.
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


def consume_pipelined(batch: int = 100) -> None:
    r = client()
    processing = f"ceiling:processing:{os.getpid()}"
    while True:
        pipe = r.pipeline(transaction=False)
        for _ in range(batch):
            pipe.lmove(QUEUE, processing, "RIGHT", "LEFT")
        taken = [raw for raw in pipe.execute() if raw is not None]
        if not taken:
            raw = r.blmove(QUEUE, processing, 1, "RIGHT", "LEFT")
            if raw is None:
                continue
            taken = [raw]
        done = r.pipeline(transaction=False)
        for raw in taken:
            job = json.loads(raw)
            common.stamp()  # the task: a no-op that records its start
            done.hset("ceiling:results", job["id"], "null")
            done.lrem(processing, 1, raw)
        done.execute()


def enqueue_all(n: int) -> None:
    r = client()
    for _ in range(n):
        r.lpush(QUEUE, payload())


def main() -> None:
    if sys.argv[1:2] == ["consume"]:
        return consume_pipelined() if sys.argv[2:3] == ["pipelined"] else consume()
    args = common.parse_args()
    if args.scenario == "enqueue":
        common.emit(common.scenario_enqueue(enqueue_all, args.n))
    elif args.scenario == "drain":
        worker = [sys.executable, __file__, "consume", args.variant or "plain"]
        common.emit(common.scenario_drain(enqueue_all, [worker] * args.workers, args.n))
    else:
        raise SystemExit("the ceiling has no delayed jobs")


if __name__ == "__main__":
    # Run through the module's importable name, so task names match the workers'.
    import adapter_redis

    adapter_redis.main()
