# demo_worker.py; this file runs a worker to consume events.
# (`skunq work -q demo -r foo` is the CLI way to do the same)

from skunkqueue.persistence.sqlite import default_cfg
from skunkqueue.worker import WorkerPool

# The first argument is the queue name to which the pool attaches.
# The second argument is the list of workers by routing key.
# If multiple workers have the same routing key,
# tasks at that key are first come first serve.
# To make tasks broadcastable, pass queue_type='broadcast'
# to the SkunkQueue constructor.
# The pool also runs a scheduler candidate (delayed jobs, retries, cron, crash
# recovery); any number of pools may, one leads. with_scheduler=False opts out.
with WorkerPool("demo", ["foo"], **default_cfg) as pool:
    pool.listen()
