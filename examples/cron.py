"""Cron and interval events.

    cd examples && python cron.py          # a worker pool with a scheduler; Ctrl-C to stop
    skunq schedules -q crondemo            # in another shell: the stored schedules
    skunq status -q crondemo               # counts, workers, leader, next due time

Schedules are stored when this module is imported, so any scheduler fires them, even
one started without `--import cron`.
"""

from datetime import datetime, timedelta

from skunkqueue import SkunkQueue
from skunkqueue.worker import WorkerPool

queue = SkunkQueue("crondemo")  # ./skunkqueue.db, or $SKUNKQUEUE_URL


@queue.event(routes=["reports"], cron="*/5 * * * *", timezone="Europe/Berlin")
def report():
    """Every five minutes, Berlin wall-clock time (DST handled: skipped times run once at
    the transition, repeated times run once)."""
    print("report at", datetime.now().isoformat(timespec="seconds"), flush=True)


@queue.event(routes=["tick"], cron="* * * * * */10", misfire="skip")
def every_ten_seconds():
    """croniter's six-field form: the seconds field comes LAST."""
    print("tick", datetime.now().isoformat(timespec="seconds"), flush=True)


@queue.event(routes=["tick"], every=timedelta(seconds=30))
def heartbeat():
    """An interval schedule: ticks at whole multiples of 30 s since the epoch."""
    print("heartbeat", datetime.now().isoformat(timespec="seconds"), flush=True)


if __name__ == "__main__":
    with WorkerPool("crondemo", ["reports", "tick"]) as pool:
        pool.listen()
