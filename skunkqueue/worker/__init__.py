"""Workers: ``WorkerPool`` supervises processes that each run a ``Worker`` loop."""

from .pool import WorkerPool
from .runner import Worker

__all__ = ["Worker", "WorkerPool"]
