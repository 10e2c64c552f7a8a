"""The skip accounting of tests/conftest.py: which skips CI accepts."""

from __future__ import annotations

from .conftest import _expected_skips, unexpected_skips


def test_only_listed_skips_with_their_reason_pass() -> None:
    allowed = [
        ("tests/a.py::test_x[[]memory[]]", "one process only"),
        ("tests/b.py::*", "no cluster"),
    ]
    skipped = [
        ("tests/a.py::test_x[memory]", "memory: one process only"),  # listed
        ("tests/a.py::test_x[sqlite]", "sqlite: one process only"),  # another parameter
        ("tests/b.py::test_y", "no cluster here"),  # listed by pattern
        ("tests/b.py::test_z", "redis-server is not installed"),  # listed test, other reason
    ]
    assert unexpected_skips(skipped, allowed) == [skipped[1], skipped[3]]


def test_the_list_in_the_repository_parses_and_says_why() -> None:
    entries = _expected_skips()
    assert entries, "tests/expected_skips.txt lists nothing"
    assert all(pattern.startswith("tests/") and reason for pattern, reason in entries)
