"""Exceptions users can catch. Each says what went wrong and where."""

from __future__ import annotations


class SkunkQueueError(Exception):
    """Base class for every error SkunkQueue raises on purpose."""


class ConfigurationError(SkunkQueueError, ValueError):
    """A queue, event or worker was configured with values that cannot work."""


class BackendUnavailable(SkunkQueueError, ConnectionError):
    """The backend named by a URL could not be opened or reached."""


class SerializationError(SkunkQueueError, TypeError):
    """Arguments or a result cannot be encoded with the event's serializer."""


class LeaseLost(SkunkQueueError):
    """A fenced write was refused because the writer no longer holds the lease."""


class JobFailed(SkunkQueueError):
    """Raised by ``JobHandle.wait`` when the job ended in ``error`` or ``cancelled``."""

    def __init__(self, job_id: str, state: str, error: dict | None) -> None:
        self.job_id = job_id
        self.state = state
        self.error = error or {}
        kind = self.error.get("type") or state
        message = self.error.get("message") or self.error.get("reason") or ""
        super().__init__(f"job {job_id} ended in {state}: {kind}: {message}".rstrip(": "))

    @property
    def traceback(self) -> str | None:
        return self.error.get("traceback")


class JobNotRetryable(SkunkQueueError, ValueError):
    """``retry`` refused a job: it is unknown or expired, or not in ``error`` or
    ``cancelled`` (the message says which)."""

    def __init__(self, job_id: str, state: str | None) -> None:
        self.job_id = job_id
        self.state = state
        why = (
            "no such job (unknown, or expired after its result_ttl)"
            if state is None
            else f"it is {state}; only a job in error or cancelled can be retried"
        )
        super().__init__(f"job {job_id} was not retried: {why}")


class JobTimeout(SkunkQueueError):
    """Raised inside a job that ran past its event's ``timeout``."""


class JobCancelled(JobTimeout):
    """Raised inside a job its worker no longer holds: it was cancelled while running
    (``cancel(..., running=True)``), or its lease lapsed and another worker took it. A
    ``JobTimeout`` too, so code that cleans up after a timeout cleans up after this; its
    outcome is not stored either way."""


class UnknownSchedule(SkunkQueueError, LookupError):
    """No schedule of that name is stored on the queue."""
