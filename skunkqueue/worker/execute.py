"""Calling one job's function: plain or ``async def``, under its soft timeout, with its
failure described in a form that can always be stored.

Nothing here may raise on account of what a job did: an exception whose ``__str__``
raises, a traceback too long to store, or a coroutine still pending when its timeout
passes all become a description the worker can store. Only ``KeyboardInterrupt`` (an
interrupting stop) passes through.
"""

from __future__ import annotations

import inspect
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import JobTimeout

if TYPE_CHECKING:
    import asyncio

# An error is stored with the job's record: a multi-megabyte message would make the
# outcome too large for some stores, and nobody reads past the first screenful.
MAX_ERROR_TEXT = 64 * 1024


def _clip(text: str) -> str:
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT // 2] + "\n[... clipped ...]\n" + text[-MAX_ERROR_TEXT // 2 :]
    # Lone surrogates (from bytes decoded with surrogateescape) cannot be encoded as UTF-8.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", "?")
    name = getattr(kind, "__qualname__", repr(kind))
    return name if module == "builtins" else f"{module}.{name}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as failure:  # noqa: BLE001 - any failure to print is the job's, not ours
        return f"<unprintable {type(exc).__name__}: str() raised {type(failure).__name__}>"


def describe_error(exc: BaseException) -> dict[str, Any]:
    """``type``, ``message`` and ``traceback`` of ``exc`` as strings that can be stored,
    whatever the exception does when printed."""
    kind = type(exc)
    try:
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001
        text = f"{_type_name(kind)}: {_message(exc)}\n(the traceback could not be formatted)"
    return {
        "type": _clip(_type_name(kind)),
        "message": _clip(_message(exc)),
        "traceback": _clip(text),
    }


class JobCall:
    """Runs job functions for one worker; owns that worker's event loop for ``async def``
    jobs, created on the first one (one loop per worker, reused job after job)."""

    def __init__(self, in_main_thread: bool) -> None:
        self._in_main_thread = in_main_thread
        self._loop: asyncio.AbstractEventLoop | None = None
        #: True only while a job's own code runs: an interrupting stop raises
        #: KeyboardInterrupt there and nowhere else, so the worker's bookkeeping between
        #: jobs (recording and writing outcomes) is never cut in half.
        self.in_job = False

    def __call__(
        self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            return self._await(fn, args, kwargs, timeout)
        with self._soft_timeout(timeout):
            self.in_job = True
            try:
                result = fn(*args, **kwargs)
            finally:
                self.in_job = False
        if inspect.iscoroutine(result):  # a plain function that hands back a coroutine
            return self._await(lambda: result, [], {}, timeout)
        return result

    def _await(
        self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        # asyncio costs a worker megabytes of modules: loaded only once a job needs it.
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        started = time.monotonic()
        awaitable = fn(*args, **kwargs)
        if timeout:
            awaitable = asyncio.wait_for(awaitable, timeout)
        task = asyncio.ensure_future(awaitable, loop=self._loop)
        self.in_job = True
        try:
            return self._loop.run_until_complete(task)
        except asyncio.TimeoutError as exc:
            # wait_for cancelled the coroutine; one that raised TimeoutError on its own
            # before the timeout keeps its own error.
            if timeout and time.monotonic() - started >= timeout:
                raise JobTimeout(f"job ran past its timeout of {timeout} s") from exc
            raise
        finally:
            self.in_job = False
            if not task.done():
                _abandon(self._loop, task)

    @contextmanager
    def _soft_timeout(self, seconds: float | None) -> Iterator[None]:
        # SIGALRM reaches only the main thread: a worker running in a thread has no soft timeout.
        if not seconds or not self._in_main_thread:
            yield
            return

        def expire(signum: int, frame: FrameType | None) -> None:
            raise JobTimeout(f"job ran past its timeout of {seconds} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()
                self._loop = None


def _abandon(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    """A job interrupted by a signal while its loop waited (stopping.py, an interrupting
    stop) left its task pending: cancel it and let it unwind now, or it would resume
    inside the next job run on this loop."""
    import asyncio

    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
