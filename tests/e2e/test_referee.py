"""The referee itself: it must see trouble, and let through only what a test declared."""

from __future__ import annotations

import re
import sys

import pytest

from .conftest import E2E
from .referee import incidents, unexpected

LOG = """\
2026-12-02 06:00:00,001 INFO MainProcess skunkqueue.worker: worker w1 serving ['foo']
2026-12-02 06:00:00,002 INFO skunq-worker-0 skunkqueue.worker: job abc tasks.add complete in 0.0001s
2026-12-02 06:00:01,000 ERROR MainProcess skunkqueue.worker: worker w1 (slot 0) died with exit code 9 while running job abc; replacing it
2026-12-02 06:00:01,500 ERROR skunq-worker-0 skunkqueue.worker: worker w2: backend error; retrying in 0.10 s
Traceback (most recent call last):
  File "runner.py", line 1, in _serve
ConnectionError: Connection refused
2026-12-02 06:00:02,000 WARNING skunq-worker-0 skunkqueue.worker: worker w2 lost the lease on ['abc']
2026-12-02 06:00:03,000 INFO MainProcess skunkqueue.worker: worker pool on queue q stopped
"""


def test_each_incident_is_one_record_with_its_traceback() -> None:
    found = [i.text for i in incidents("pool", LOG)]
    assert len(found) == 3
    assert "died with exit code 9" in found[0]
    assert found[1].endswith("ConnectionError: Connection refused")
    assert "lost the lease" in found[2]
    assert not [i for i in incidents("pool", LOG.split("2026-12-02 06:00:01,000")[0])]


def test_only_declared_incidents_pass() -> None:
    outputs = [("pool", LOG)]
    assert len(unexpected(outputs, [])) == 3
    declared = [re.compile(r"died with exit code 9"), re.compile(r"ConnectionError")]
    (left,) = unexpected(outputs, declared)
    assert "lost the lease" in left.text and left.process == "pool"


def test_a_bare_traceback_is_trouble() -> None:
    crash = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n'
    (incident,) = incidents("script", crash)
    assert incident.text.endswith("ValueError: boom")


@pytest.mark.parametrize("e2e", ["sqlite"], indirect=True)
def test_the_fixture_reads_every_process(e2e: E2E) -> None:
    proc = e2e.spawn([sys.executable, "-c", "raise RuntimeError('unnoticed')"], name="crasher")
    proc.wait()
    (incident,) = e2e.trouble()
    assert "RuntimeError: unnoticed" in incident.text and f"pid {proc.pid}" in incident.process
    e2e.expect(r"RuntimeError: unnoticed")  # declared: the referee lets this test pass
    assert e2e.trouble() == []
