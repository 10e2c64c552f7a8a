"""The process-wide table of registered events, by queue name and event name.

It is what "an event the worker's code registered" means: a worker runs a job only if a
module it imported put the job's event here. A job record can never name an import path.
"""

from __future__ import annotations

import threading
from typing import Any

_events: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def register_event(queue_name: str, event_name: str, event: Any) -> None:
    """Make ``event`` what jobs naming ``event_name`` on queue ``queue_name`` run."""
    with _lock:
        _events[(queue_name, event_name)] = event


def lookup_event(queue_name: str, event_name: str) -> Any | None:
    """The registered ``Event``, or ``None`` if no imported module registered it."""
    with _lock:
        return _events.get((queue_name, event_name))
