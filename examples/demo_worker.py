# demo_worker.py; this file runs a worker to consume events.
# (`skunq work -q demo -r foo --with-scheduler` is the CLI way to do the same)

from skunkqueue.persistence.sqlite import default_cfg
from skunkqueue.worker import WorkerPool

# The first argument is the queue name to which the pool attaches.
# The second argument is the list of workers by routing key.
# If multiple workers have the same routing key,
# tasks at that key are first come first serve.
# To make tasks broadcastable, pass queue_type='broadcast'
# to the SkunkQueue constructor.
# Jobs fired for now go straight to their route; delayed and cron jobs also need a
# scheduler: `skunq scheduler -q demo`, or with_scheduler=True here.
with WorkerPool("demo", ["foo"], **default_cfg) as pool:
    pool.listen()
