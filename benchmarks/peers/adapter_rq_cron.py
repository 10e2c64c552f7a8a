"""RQ's cron configuration for the peer benchmark's cron scenario (`rq cron adapter_rq_cron`)."""

from adapter_rq import tick
from rq import cron

cron.register(tick, "bench", cron="* * * * *")
