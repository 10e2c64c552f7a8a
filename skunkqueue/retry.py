"""Retry policy: which failures run again, and when.

The policy lives above the backend: a retried job is simply finished as ``retrying``
with a later eta, and the scheduler promotes it like any delayed job.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from .checks import number_at_least, seconds
from .errors import ConfigurationError

ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Retry:
    """Run a failed job again, up to ``max_attempts`` executions in all.

    The n-th retry waits ``min(max_delay, delay * backoff ** (n - 1))`` seconds, scaled by
    a random factor in ``[1 - jitter, 1 + jitter]``; a draw past ``max_delay`` is
    reflected below it, so no delay exceeds ``max_delay`` and capped retries stay spread. Only exceptions that are instances of
    a type in ``on`` are retried; any other ends the job in ``error`` at once.
    """

    max_attempts: int = 3
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.1
    on: ExceptionTypes = field(default=(Exception,))

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"Retry.max_attempts must be an integer >= 1, not {self.max_attempts!r}"
            )
        for name in ("delay", "max_delay"):
            seconds(f"Retry.{name}", getattr(self, name), zero=True)
        number_at_least("Retry.backoff", self.backoff, 1)
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"Retry.jitter must be between 0 and 1, not {self.jitter!r}")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise ConfigurationError(f"Retry.on must be exception types, not {self.on!r}")
        object.__setattr__(self, "on", on)

    @classmethod
    def coerce(cls, value: Retry | int | None) -> Retry | None:
        """``retry=3`` is short for ``Retry(max_attempts=3)``."""
        if value is None or isinstance(value, Retry):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"retry must be a Retry or an int, not {value!r}")
        return cls(max_attempts=value)

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether execution number ``attempt`` (1-based) that raised ``exc`` runs again."""
        return attempt < self.max_attempts and isinstance(exc, self.on)

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed execution number ``attempt`` (1-based): never
        more than ``max_delay``, whatever the attempt count or the jitter drawn."""
        delay = self._backed_off(attempt)
        if self.jitter:
            delay *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
            if delay > self.max_delay:
                # Reflect rather than clip: retries past the cap stay spread out below it
                # instead of all landing on max_delay together.
                delay = max(0.0, 2 * self.max_delay - delay)
        return max(0.0, delay)

    def _backed_off(self, attempt: int) -> float:
        if self.delay == 0 or self.backoff == 1 or self.delay >= self.max_delay:
            return min(self.max_delay, self.delay)
        # Past the attempt where the curve crosses max_delay, backoff ** n only risks
        # OverflowError (a float power past ~1e308), so compare exponents in log space.
        exponent = max(0, attempt - 1)
        if exponent * math.log(self.backoff) >= math.log(self.max_delay / self.delay):
            return self.max_delay
        try:
            return min(self.max_delay, self.delay * self.backoff**exponent)
        except OverflowError:  # a tiny delay with a huge backoff: the product still fits
            return min(
                self.max_delay, math.exp(math.log(self.delay) + exponent * math.log(self.backoff))
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-safe copy stored on the job record, so anyone can see the policy."""
        return {
            "max_attempts": self.max_attempts,
            "delay": self.delay,
            "backoff": self.backoff,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "on": [f"{t.__module__}.{t.__qualname__}" for t in self.on],
        }
