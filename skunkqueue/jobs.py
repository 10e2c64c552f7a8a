"""Kept so that ``from skunkqueue.jobs import ...`` still works: the record and its states
live in ``model.py``, the handles in ``handles.py``."""

from .handles import BroadcastHandle, JobHandle
from .model import CANCELLABLE, WAITING, JobRecord, JobState, Outcome

__all__ = [
    "CANCELLABLE",
    "WAITING",
    "BroadcastHandle",
    "JobHandle",
    "JobRecord",
    "JobState",
    "Outcome",
]
