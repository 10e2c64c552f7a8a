"""SkunkQueue: task scheduling for humans who use Python.

Jobs that run at a given moment, on a cron, or again after a failure, on the store you
already run. See the README for the tour.
"""

from .config import QueueConfig
from .errors import (
    BackendUnavailable,
    ConfigurationError,
    JobCancelled,
    JobFailed,
    JobNotRetryable,
    JobTimeout,
    LeaseLost,
    SerializationError,
    SkunkQueueError,
    UnknownSchedule,
)
from .events import Event
from .handles import BroadcastHandle, JobHandle
from .jobinfo import JobInfo
from .model import JobRecord, JobState
from .queue import SkunkQueue
from .retry import Retry
from .schedule_ops import ScheduleInfo, TickInfo

__version__ = "0.2.0"

__all__ = [
    "BackendUnavailable",
    "BroadcastHandle",
    "ConfigurationError",
    "Event",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobNotRetryable",
    "JobRecord",
    "JobState",
    "JobTimeout",
    "LeaseLost",
    "QueueConfig",
    "Retry",
    "ScheduleInfo",
    "SerializationError",
    "SkunkQueue",
    "SkunkQueueError",
    "TickInfo",
    "UnknownSchedule",
]
