"""The scheduler: leader election, cron and interval ticks, promotion and recovery."""

from .service import Scheduler

__all__ = ["Scheduler"]
