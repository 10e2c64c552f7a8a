"""The process referee: what an end-to-end test's processes said, read at teardown.

A test passes only if none of its processes logged trouble it did not declare: a
traceback, a worker that died, a backend error, a lost lease or lead, a worker that
stopped starting jobs because its leases went stale, an ERROR line. A
fault test declares the trouble it causes (``e2e.expect(r"died with exit code 9")``);
anything else in the logs is a bug the test would otherwise have hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# What counts as trouble in a process's output. Log lines look like
# "2026-12-02 06:00:00,000 LEVEL processName logger: message".
TROUBLE = re.compile(
    r"Traceback \(most recent call last\)"
    r"| (?:ERROR|CRITICAL) "
    r"|died with exit code"
    r"|backend error"
    r"|lease lost|lost the lease|lost the lead|was deposed"
    r"|failed; retrying|failed; will retry"
    r"|starts no job and claims none"
    r"|handed back \d+ jobs of dead worker"
)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@dataclass(frozen=True)
class Incident:
    """One piece of trouble: a log record with whatever traceback follows it, or a bare
    traceback (a process that died before logging was set up)."""

    process: str
    text: str

    def __str__(self) -> str:
        return f"[{self.process}] {self.text}"


def incidents(process: str, output: str) -> Iterator[Incident]:
    """The trouble in one process's output, each log record with its continuation lines."""
    record: list[str] = []
    for line in output.splitlines():
        if LOG_LINE.match(line) or not record:
            yield from _judge(process, record)
            record = [line]
        else:
            record.append(line)
    yield from _judge(process, record)


def _judge(process: str, record: list[str]) -> Iterator[Incident]:
    text = "\n".join(record)
    if record and TROUBLE.search(text):
        yield Incident(process, text)


def unexpected(
    outputs: Iterable[tuple[str, str]], expected: Iterable[re.Pattern[str]]
) -> list[Incident]:
    """Incidents in ``outputs`` ((process, output) pairs) that no expected pattern matches."""
    allowed = list(expected)
    return [
        incident
        for process, output in outputs
        for incident in incidents(process, output)
        if not any(pattern.search(incident.text) for pattern in allowed)
    ]
