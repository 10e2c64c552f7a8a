"""The ``skunq`` command line against real processes, and what a worker refuses to run."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from skunkqueue.jobs import JobRecord
from skunkqueue.persistence.base import SCHEDULER_LEASE

from .conftest import E2E, wait_until

SUBCOMMANDS = [
    "work",
    "scheduler",
    "status",
    "jobs",
    "cancel",
    "show",
    "retry",
    "schedules",
    "purge",
]

TASKS = """
from pathlib import Path

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
HERE = Path(__file__).parent


@queue.event(routes=['foo'])
def mark(name):
    (HERE / f'{name}.ran').write_text('ran')
    return name


@queue.event(routes=['bar'])
def mark_bar(name):
    (HERE / f'{name}.ran').write_text('ran')
    return name


def danger(name):
    \"\"\"A plain function, not an event: no record may make a worker call it.\"\"\"
    (HERE / f'{name}.ran').write_text('ran')
"""

CRON_TASKS = """
from datetime import timedelta

from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['foo'], cron='0 0 1 1 *', timezone='UTC')
def new_year():
    return 'happy new year'


@queue.event(routes=['bar'], every=timedelta(hours=1))
def hourly():
    return 'tick'
"""


def skunq() -> str:
    path = shutil.which("skunq") or str(Path(sys.executable).parent / "skunq")
    assert os.path.exists(path), "the skunq console script is not installed"
    return path


def run_skunq(e2e: E2E, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script itself (``e2e.cli`` runs ``python -m skunkqueue``)."""
    return subprocess.run(
        [skunq(), *args],
        cwd=e2e.dir,
        env=e2e.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def when(ts: float) -> str:
    """How the CLI prints an instant: local time, ISO 8601, milliseconds."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def put_record(
    e2e: E2E, event: str, payload: str, serializer: str = "json", route: str = "foo"
) -> str:
    job_id = uuid.uuid4().hex
    record = JobRecord(
        id=job_id,
        event=event,
        route=route,
        payload=payload,
        serializer=serializer,
        created_at=time.time(),
    )
    assert e2e.queue().backend.put([record], time.time()) == [True]
    return job_id


def finished(e2e: E2E, job_id: str) -> JobRecord | None:
    record = e2e.queue().backend.get(job_id, time.time())
    return (
        record
        if record is not None and record.state in ("complete", "error", "cancelled")
        else None
    )


# -- help and entry points ----------------------------------------------------------


# Help and argument errors touch no store: they run once, not once per backend.
ONCE = pytest.mark.parametrize("e2e", ["sqlite"], indirect=True)


@ONCE
@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_exits_zero_and_python_m_matches(e2e: E2E, command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    script = run_skunq(e2e, *args)
    module = e2e.cli(*args)
    assert script.returncode == 0, script.stderr
    assert module.returncode == 0, module.stderr
    assert script.stdout.startswith("usage: skunq"), script.stdout
    assert script.stdout == module.stdout
    if command is None:
        for name in SUBCOMMANDS:
            assert name in script.stdout


@ONCE
def test_unknown_subcommand_fails(e2e: E2E) -> None:
    assert run_skunq(e2e, "frobnicate").returncode != 0
    assert e2e.cli("frobnicate").returncode != 0


# -- status ---------------------------------------------------------------------------


def test_status_shows_counts_workers_leader_and_next_due(e2e: E2E) -> None:
    e2e.write_module("cli_tasks", TASKS)
    scheduler = e2e.scheduler("--leader-ttl", "5")
    worker = e2e.worker("foo", extra=("--lease", "5"))
    e2e.wait_for_workers(1)
    backend = e2e.queue().backend
    wait_until(lambda: backend.leases(SCHEDULER_LEASE, time.time()), what="a leading scheduler")
    tasks = e2e.import_module("cli_tasks")

    assert tasks.mark.fire("done").wait(timeout=10) == "done"
    for name in ("idle1", "idle2"):
        tasks.mark_bar.fire(name)  # nobody serves 'bar'
    soon = time.time() + 3600
    tasks.mark.fire_at(datetime.fromtimestamp(soon, timezone.utc), "later1")
    tasks.mark.fire_at(timedelta(hours=2), "later2")

    for status in (e2e.cli("status"), run_skunq(e2e, "status")):
        assert status.returncode == 0, status.stderr
        out = status.stdout
        assert re.search(r"^\s*complete\s+foo\s+1$", out, re.MULTILINE), out
        assert re.search(r"^\s*queued\s+bar\s+2$", out, re.MULTILINE), out
        assert re.search(r"^\s*scheduled\s+foo\s+2$", out, re.MULTILINE), out
        assert "leader: " in out and f"host {socket.gethostname()}, pid {scheduler.pid}," in out, (
            out
        )
        assert "workers: 1 live" in out, out
        (worker_pid,) = (int(p) for p in re.findall(r"routes=foo\s+host=\S+ pid=(\d+)", out))
        assert parent_of(worker_pid) == worker.pid, "the live worker should be a child of the pool"
        assert f"next due: {when(soon)}" in out, out
        assert f"wake-ups: {backend.wake_mode}" in out, out
        if backend.url.startswith("mongodb"):  # the stand-in server is a replica set
            assert backend.wake_mode == "change streams"


# -- cancel ---------------------------------------------------------------------------


def test_cancel_a_scheduled_job_and_refuse_a_finished_one(e2e: E2E) -> None:
    e2e.write_module("cli_tasks", TASKS)
    e2e.worker("foo", extra=("--lease", "5"), scheduler=True)
    e2e.wait_for_workers(1)
    tasks = e2e.import_module("cli_tasks")

    doomed = tasks.mark.fire_at(timedelta(seconds=2.5), "doomed")
    assert doomed.state == "scheduled"
    result = e2e.cli("cancel", doomed.id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cancelled {doomed.id}" in result.stdout
    assert doomed.state == "cancelled"
    assert doomed.error == {"reason": "cancelled from the CLI"}

    # A job due just after the cancelled one completes: the scheduler went past its eta.
    later = tasks.mark.fire_at(timedelta(seconds=3), "later")
    assert later.wait(timeout=15) == "later"
    assert later.record().started_at >= later.record().eta
    assert doomed.state == "cancelled"
    assert not (e2e.dir / "doomed.ran").exists()

    refused = e2e.cli("cancel", later.id)
    assert refused.returncode == 1
    assert f"not cancelled {later.id}: it is complete" in refused.stdout
    assert later.state == "complete"
    unknown = e2e.cli("cancel", "no-such-job")
    assert unknown.returncode == 1
    assert "no such job" in unknown.stdout


# -- schedules --------------------------------------------------------------------------


def test_schedules_lists_and_removes(e2e: E2E) -> None:
    e2e.write_module("cron_tasks", CRON_TASKS)
    empty = e2e.cli("schedules")
    assert empty.returncode == 0 and "(no schedules)" in empty.stdout, empty.stdout + empty.stderr

    e2e.import_module("cron_tasks")  # defining the events stores their schedules
    now = datetime.now(timezone.utc)
    new_year = datetime(now.year + 1, 1, 1, tzinfo=timezone.utc).timestamp()
    listing = run_skunq(e2e, "schedules")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert set(lines) == {"cron_tasks.new_year", "cron_tasks.hourly"}, listing.stdout
    assert "cron '0 0 1 1 *' (UTC)" in lines["cron_tasks.new_year"]
    assert "route=foo" in lines["cron_tasks.new_year"]
    assert f"next={when(new_year)}" in lines["cron_tasks.new_year"]
    assert "every 3600s" in lines["cron_tasks.hourly"] and "route=bar" in lines["cron_tasks.hourly"]
    hourly_next = float(
        datetime.fromisoformat(lines["cron_tasks.hourly"].split("next=")[1]).timestamp()
    )
    assert time.time() < hourly_next <= time.time() + 3601

    removed = e2e.cli("schedules", "--remove", "cron_tasks.new_year")
    assert removed.returncode == 0, removed.stderr
    after = e2e.cli("schedules")
    assert "cron_tasks.new_year" not in after.stdout
    assert "cron_tasks.hourly" in after.stdout
    assert [s.name for s in e2e.queue().backend.schedules()] == ["cron_tasks.hourly"]
    again = e2e.cli("schedules", "--remove", "cron_tasks.new_year")
    assert again.returncode == 1
    assert "no schedule named cron_tasks.new_year" in again.stderr


# -- purge ------------------------------------------------------------------------------


def test_purge_cancels_queued_jobs_of_one_route(e2e: E2E) -> None:
    e2e.write_module("cli_tasks", TASKS)
    tasks = e2e.import_module("cli_tasks")
    purged = [tasks.mark.fire(f"purged{i}") for i in range(5)]
    kept = tasks.mark_bar.fire("kept")

    result = run_skunq(e2e, "purge", "-r", "foo")
    assert result.returncode == 0, result.stderr
    assert "purged 5 queued jobs from route foo" in result.stdout
    for handle in purged:
        assert handle.state == "cancelled"
        assert "purged" in handle.error["reason"]
    assert kept.state == "queued"

    e2e.worker("foo", "bar", extra=("--lease", "5"))
    assert tasks.mark.fire("after").wait(timeout=15) == "after"
    assert kept.wait(timeout=15) == "kept"
    for i, handle in enumerate(purged):
        assert handle.state == "cancelled"
        assert not (e2e.dir / f"purged{i}.ran").exists()

    # python -m skunkqueue and skunq read the same queue the same way.
    listing = run_skunq(e2e, "jobs", "--state", "cancelled")
    assert listing.returncode == 0
    assert listing.stdout == e2e.cli("jobs", "--state", "cancelled").stdout
    assert sorted(line.split()[0] for line in listing.stdout.splitlines()) == sorted(
        h.id for h in purged
    )


# -- what a worker refuses to run -----------------------------------------------------------


def test_unknown_events_are_refused_without_import_or_call(e2e: E2E) -> None:
    e2e.write_module("cli_tasks", TASKS)
    # A module the worker could import from its path, but that is not in its working
    # directory: a record naming it must not make the worker import it.
    site = e2e.dir / "site"
    site.mkdir()
    (site / "sidemod.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(e2e.dir / 'sidemod.imported')!r}).write_text('imported')\n"
        "def fn(*args):\n"
        f"    Path({str(e2e.dir / 'sidemod.ran')!r}).write_text('ran')\n"
    )
    e2e.env["PYTHONPATH"] += os.pathsep + str(site)
    # Files inside folders of the working directory: never imported for a record either,
    # as a module of a package or as a package.
    for folder in ("deploy/tools", "localpkg"):
        (e2e.dir / folder).mkdir(parents=True)
    planted = (
        "from pathlib import Path\n"
        f"Path({str(e2e.dir / 'planted.imported')!r}).write_text('imported')\n"
        "def x(*args):\n"
        "    pass\n"
    )
    (e2e.dir / "deploy" / "__init__.py").write_text("")
    (e2e.dir / "deploy" / "tools" / "__init__.py").write_text("")
    (e2e.dir / "deploy" / "tools" / "wipe.py").write_text(planted)
    (e2e.dir / "localpkg" / "__init__.py").write_text(planted)
    e2e.worker("foo", extra=("--lease", "5"))
    e2e.wait_for_workers(1)
    pwned = e2e.dir / "pwned"

    refused = {
        "os.system": put_record(e2e, "os.system", json.dumps([[f"touch {pwned}"], {}])),
        "sidemod.fn": put_record(e2e, "sidemod.fn", json.dumps([[], {}])),
        "nosuchmodule.fn": put_record(e2e, "nosuchmodule.fn", json.dumps([[], {}])),
        "deploy.tools.wipe.x": put_record(e2e, "deploy.tools.wipe.x", json.dumps([[], {}])),
        "localpkg.x": put_record(e2e, "localpkg.x", json.dumps([[], {}])),
        # A local module may be imported, but only its registered events run.
        "cli_tasks.danger": put_record(e2e, "cli_tasks.danger", json.dumps([["danger"], {}])),
    }
    tasks = e2e.import_module("cli_tasks")
    assert tasks.mark.fire("ok").wait(timeout=15) == "ok"

    for event, job_id in refused.items():
        record = wait_until(
            lambda job_id=job_id: finished(e2e, job_id), what=f"the {event} record to finish"
        )
        assert record.state == "error", (event, record)
        assert record.error["reason"] == "unknown event", (event, record.error)
        assert event in record.error["message"]
        assert record.deliveries == 1, (event, record)
    assert not pwned.exists(), "os.system was called"
    assert not (e2e.dir / "sidemod.imported").exists(), (
        "a module outside the working directory was imported"
    )
    assert not (e2e.dir / "sidemod.ran").exists()
    assert not (e2e.dir / "planted.imported").exists(), "a file inside a folder was imported"
    assert not (e2e.dir / "danger.ran").exists(), "a plain function of a local module was called"

    errors = e2e.cli("jobs", "--state", "error").stdout
    assert all(job_id in errors for job_id in refused.values()), errors


class MakesFile:
    """Unpickling this creates ``path`` (it unpickles to ``open(path, 'w')``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def pickled_call(*args: Any) -> str:
    return base64.b64encode(pickle.dumps([list(args), {}])).decode()


def test_pickle_record_for_a_json_event_is_never_unpickled(e2e: E2E) -> None:
    # The payload works: unpickling it here does create its file.
    probe = e2e.dir / "probe"
    unpickled = pickle.loads(base64.b64decode(pickled_call(MakesFile(probe))))
    unpickled[0][0].close()
    assert probe.exists()

    e2e.write_module("cli_tasks", TASKS)
    e2e.worker("foo", extra=("--lease", "5"))
    e2e.wait_for_workers(1)
    marker = e2e.dir / "unpickled"
    job_id = put_record(e2e, "cli_tasks.mark", pickled_call(MakesFile(marker)), serializer="pickle")
    record = wait_until(lambda: finished(e2e, job_id), what="the pickled record to finish")
    assert record.state == "error"
    assert record.error["reason"] == "serializer mismatch", record.error
    assert not marker.exists(), "the worker unpickled a payload its event never opted in to"

    tasks = e2e.import_module("cli_tasks")
    assert tasks.mark.fire("json").wait(timeout=15) == "json"
    assert not marker.exists()
    assert not any(p.name.endswith(".ran") and p.name != "json.ran" for p in e2e.dir.iterdir())


def test_a_worker_told_what_to_import_imports_nothing_else(e2e: E2E) -> None:
    e2e.write_module("cli_tasks", TASKS)
    # A top-level script of the working directory that does define the event: a worker
    # started with --import must not import it for a record that names it.
    e2e.write_module(
        "other_tasks",
        """
        from pathlib import Path
        from skunkqueue import SkunkQueue

        Path(__file__).with_name('other_tasks.imported').write_text('imported')
        queue = SkunkQueue('{queue}', url='{url}')

        @queue.event(routes=['foo'])
        def fn():
            return 'ran'
        """,
    )
    worker = e2e.worker("foo", extra=("--import", "cli_tasks"))
    e2e.wait_for_workers(1)
    job_id = put_record(e2e, "other_tasks.fn", json.dumps([[], {}]))
    tasks = e2e.import_module("cli_tasks")
    assert tasks.mark.fire("ok").wait(timeout=15) == "ok"
    record = wait_until(lambda: finished(e2e, job_id), what="the other_tasks.fn record to finish")
    assert (record.state, record.error["reason"]) == ("error", "unknown event")
    message = record.error["message"]
    assert "(cli_tasks;" in message and str(e2e.dir) in message and "--import" in message
    assert "(other_tasks?)" in message
    assert not (e2e.dir / "other_tasks.imported").exists()
    worker.wait_for_output(f"job {job_id} fails: unknown event 'other_tasks.fn'")
