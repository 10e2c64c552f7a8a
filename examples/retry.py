"""Retry policies.

    cd examples && python retry.py

A failing job is rescheduled at now + min(max_delay, delay * backoff ** (attempt - 1)),
jittered, for exceptions listed in `on`; anything else, or running out of attempts,
ends it in `error` with the exception type, message and traceback stored.
"""

import random

from skunkqueue import JobFailed, Retry, SkunkQueue
from skunkqueue.worker import WorkerPool

queue = SkunkQueue("retrydemo")


@queue.event(
    routes=["io"],
    retry=Retry(max_attempts=5, delay=0.2, backoff=2.0, max_delay=5, jitter=0.1, on=(IOError,)),
)
def fetch(url):
    if random.random() < 0.6:
        raise OSError(f"{url}: connection reset")
    return f"fetched {url}"


@queue.event(routes=["io"], retry=3)  # short for Retry(max_attempts=3): retries any Exception
def always_fails():
    raise ValueError("this one never works")


if __name__ == "__main__":
    # start() runs the pool's processes in the background; leaving the block stops them
    # gracefully. (A long-running deployment uses `skunq work` or pool.listen() instead.)
    with WorkerPool("retrydemo", ["io", "io"]) as pool:
        pool.start()
        for run in [fetch.fire(f"https://example.invalid/{i}") for i in range(5)]:
            try:
                print(run.wait(timeout=30), f"after {run.attempts} attempts")
            except JobFailed as exc:
                print("gave up:", exc)
        try:
            always_fails.fire().wait(timeout=30)
        except JobFailed as exc:
            print("always_fails:", exc)
            print("  last traceback line:", exc.traceback.splitlines()[-1])
