"""``skunq schedules`` operating a schedule, in this process (``cli.main``) on a SQLite
file: the one-line listing keeps its fields, NAME shows one schedule whole, and every
operation says what it did or why not, in one line, with its exit status."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from skunkqueue import SkunkQueue, cli


@pytest.fixture
def skunq(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url, name = f"sqlite:///{tmp_path}/jobs.db", f"q{uuid.uuid4().hex[:8]}"
    queue = SkunkQueue(name, url=url)

    @queue.event(routes=["reports"], name="tasks.report", every=60)
    def report() -> None:
        return None

    def run(*args: str) -> tuple[int, str, str]:
        status = cli.main(["schedules", "-q", name, "--url", url, *args])
        out, err = capsys.readouterr()
        return status, out, err

    run.queue = queue  # type: ignore[attr-defined]
    yield run
    queue.close()


def test_pause_resume_and_trigger(skunq, capsys) -> None:
    assert skunq("--pause", "tasks.report", "--note", "partner API down")[:2] == (
        0,
        "paused tasks.report\n",
    )
    status, out, _ = skunq()
    assert status == 0
    assert out.startswith("tasks.report  every 60s  route=reports  misfire=coalesce  revision=2")
    assert out.rstrip().endswith("PAUSED: partner API down")
    status, out, _ = skunq("--trigger", "tasks.report")
    assert status == 0 and out.startswith("triggered tasks.report: job ")
    status, out, _ = skunq("tasks.report")
    assert "PAUSED since" in out and "pending: 1 runs asked for now" in out
    assert "next: " in out and "last ticks: none yet" in out
    cli.main(["status", "-q", skunq.queue.name, "--url", skunq.queue.config.url])
    assert "schedule tasks.report is PAUSED since " in capsys.readouterr().out
    assert skunq("--resume", "tasks.report")[:2] == (0, "resumed tasks.report\n")
    assert skunq("--resume", "tasks.report")[:2] == (0, "not paused: tasks.report\n")


def test_backfill_counts_what_it_adds(skunq) -> None:
    args = ("--backfill", "tasks.report", "--from", "2026-01-01T00:00:00Z", "--to")
    status, out, _ = skunq(*args, "2026-01-01T01:00:00+00:00")
    assert (status, out) == (0, "backfill of tasks.report: 60 never-run ticks requested\n")
    status, out, _ = skunq(*args, "2026-01-01T01:00:00+00:00")
    assert (status, out) == (0, "backfill of tasks.report: 0 never-run ticks requested\n")


@pytest.mark.parametrize(
    "args, status, message",
    [
        (("--pause", "tasks.nope"), 2, "no schedule named 'tasks.nope'"),
        (("--trigger", "tasks.nope"), 2, "no schedule named 'tasks.nope'"),
        (("tasks.nope",), 1, "no schedule named tasks.nope"),
        (("--backfill", "tasks.report"), 2, "needs --from T and --to T"),
        (("--note", "why"), 2, "--note goes with --pause NAME"),
        (
            (
                "--backfill",
                "tasks.report",
                "--from",
                "2026-01-02T00:00Z",
                "--to",
                "2026-01-01T00:00Z",
            ),
            2,
            "start < end",
        ),
    ],
)
def test_mistakes_are_one_line_and_change_nothing(skunq, args, status, message) -> None:
    before = skunq.queue.backend.schedules()
    got, _, err = skunq(*args)
    assert got == status and message in err and len(err.strip().splitlines()) == 1
    assert skunq.queue.backend.schedules() == before


def test_a_time_without_a_zone_is_refused_by_the_parser(skunq) -> None:
    with pytest.raises(SystemExit) as exit:
        skunq("--backfill", "tasks.report", "--from", "2026-01-01T00:00", "--to", "2026-01-02")
    assert exit.value.code == 2
