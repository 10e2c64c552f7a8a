# broadcast_worker.py; three workers on route 'foo', each gets its own copy of a broadcast.

from skunkqueue.persistence.sqlite import default_cfg
from skunkqueue.worker import WorkerPool

with WorkerPool("demo", ["foo", "foo", "foo"], **default_cfg) as pool:
    pool.listen()
