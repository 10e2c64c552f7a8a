"""No sleep-and-hope: a test waits on a condition with a deadline, never on the clock.

Every ``time.sleep`` call in the test code must say why it is not a wait for something
to happen, with a ``# pause: <reason>`` comment on its line: a job body that must take
time, the poll interval of a loop that has a deadline, pacing of a load generator.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def sleeps(path: Path) -> list[int]:
    """Line numbers of ``time.sleep(...)`` and bare ``sleep(...)`` calls in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if (
            isinstance(fn, ast.Attribute)
            and fn.attr == "sleep"
            and isinstance(fn.value, ast.Name)
            and fn.value.id == "time"
        ) or (isinstance(fn, ast.Name) and fn.id == "sleep"):
            found.append(node.lineno)
    return found


def test_every_sleep_in_the_tests_says_why() -> None:
    unexplained = []
    checked = 0
    for path in sorted(TESTS.rglob("*.py")):
        lines = path.read_text().splitlines()
        for number in sleeps(path):
            checked += 1
            if "# pause:" not in lines[number - 1]:
                unexplained.append(
                    f"{path.relative_to(TESTS.parent)}:{number}: {lines[number - 1].strip()}"
                )
    assert checked > 0, "the scan found no sleep at all: it is not looking"
    assert not unexplained, (
        "time.sleep in a test without '# pause: <reason>'; wait on a condition with a "
        "deadline instead (tests/waiting.py):\n" + "\n".join(unexplained)
    )


def test_the_scan_sees_a_sleep(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time\nfrom time import sleep\ntime.sleep(1)\nsleep(2)\nx = 'time.sleep(3)'\n"
    )
    assert sleeps(sample) == [3, 4]
