# broadcast.py; every worker alive on route 'foo' runs its own copy of each fire.
# Start examples/broadcast_worker.py first (three workers), then run this.

import os

from skunkqueue import SkunkQueue
from skunkqueue.persistence.sqlite import default_cfg

queue = SkunkQueue("demo", queue_type="broadcast", **default_cfg)


@queue.event(routes=["foo"])
def hello(greeting):
    return f"{greeting} from worker process {os.getpid()}"


if __name__ == "__main__":
    run = hello.fire("hello")
    for result in run.wait(timeout=10):
        print(result)
