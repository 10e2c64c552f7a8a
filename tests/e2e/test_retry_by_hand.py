"""Retrying by hand with real processes: an ``UnknownEvent`` failure of a rolling deploy
run again once the worker knows the event, with ``skunq retry`` as an operator would; and
retries of the same jobs from several processes at once, each job queued once."""

from __future__ import annotations

import json
import signal
import sys

from skunkqueue.jobs import Outcome

from ..contract.support import job
from .conftest import E2E, wait_until

OLD_TASKS = """
from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['foo'])
def ping():
    return 'pong'
"""

NEW_TASKS = """
from skunkqueue import SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')


@queue.event(routes=['foo'])
def greet(name):
    return f'hello {name}'
"""


def test_an_unknown_event_failure_runs_again_after_a_deploy(e2e: E2E) -> None:
    e2e.write_module("old_tasks", OLD_TASKS)
    e2e.write_module("new_tasks", NEW_TASKS)
    old = e2e.worker("foo", extra=("--import", "old_tasks"))
    e2e.wait_for_workers(1)
    handle = e2e.import_module("new_tasks").greet.fire("ops")
    wait_until(lambda: handle.state == "error", 15, what="the job to fail on the old worker")
    assert handle.error["type"] == "UnknownEvent"
    refused = e2e.cli("retry", "no-such-job")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "no-such-job was not retried: no such job" in refused.stderr

    old.signal(signal.SIGTERM)
    assert old.wait() == 0
    e2e.worker("foo", extra=("--import", "old_tasks", "--import", "new_tasks"))
    done = e2e.cli("retry", handle.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"retried {handle.id}: queued on its route"
    assert handle.wait(timeout=20) == "hello ops"

    shown = e2e.cli("show", handle.id, "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert (info["state"], info["result"], info["args"], info["attempts"]) == (
        "complete",
        "hello ops",
        ["ops"],
        2,
    )
    [earlier] = info["history"]
    assert (earlier["attempt"], earlier["state"]) == (1, "error")
    assert earlier["error"]["type"] == "UnknownEvent"
    assert earlier["finished_at"].endswith("+00:00")
    text = e2e.cli("show", handle.id)
    assert "UnknownEvent" in text.stdout and "attempt 1: error" in text.stdout
    again = e2e.cli("retry", handle.id)
    assert again.returncode == 1
    assert "it is complete; only a job in error or cancelled can be retried" in again.stderr
    missing = e2e.cli("show", "no-such-job")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "skunq: no such job no-such-job (unknown, or expired)",
    )


RETRIER = """
import json, sys, time
from pathlib import Path

from skunkqueue import JobNotRetryable, SkunkQueue

queue = SkunkQueue('{queue}', url='{url}')
name, ids = sys.argv[1], sys.argv[2:]
Path(name + '.ready').write_text('ready')
while not Path('go').exists():
    time.sleep(0.001)  # pause: the start gate, polled until the test opens it
answers = {}
for job_id in ids:
    try:
        queue.retry(job_id)
        answers[job_id] = 'retried'
    except JobNotRetryable as exc:
        answers[job_id] = str(exc)
Path(name + '.part').write_text(json.dumps(answers))
Path(name + '.part').rename(name + '.json')  # whole, or not there yet
"""

RETRIERS = 4


def test_retries_from_several_processes_at_once_queue_each_job_once(e2e: E2E) -> None:
    backend = e2e.queue().backend
    jobs = max(10, int(40 * e2e.scale))
    ids = [f"job-{i}" for i in range(jobs)]
    now = backend.now()
    backend.put([job(i, route="held", eta=now) for i in ids], now)
    taken = backend.claim(["held"], "w", now, 30.0, limit=jobs)
    assert len(taken) == jobs
    error = {"type": "ValueError", "message": "bad", "traceback": "..."}
    assert all(backend.finish([Outcome(i, "error", error=error) for i in ids], "w", now))
    e2e.write_module("retrier", RETRIER)
    for n in range(RETRIERS):
        order = ids[n:] + ids[:n]  # each process starts at a different job
        e2e.spawn([sys.executable, "retrier.py", f"r{n}", *order], name=f"retrier{n}")
    wait_until(
        lambda: all((e2e.dir / f"r{n}.ready").exists() for n in range(RETRIERS)),
        30,
        what="every retrier process at the start gate",
    )
    (e2e.dir / "go").write_text("go")
    outputs = [e2e.dir / f"r{n}.json" for n in range(RETRIERS)]
    wait_until(lambda: all(p.exists() for p in outputs), 60, what="every retrier to finish")
    answers = [json.loads(p.read_text()) for p in outputs]
    for job_id in ids:
        said = [a[job_id] for a in answers]
        assert said.count("retried") == 1, (job_id, said)
        for refusal in said:
            assert refusal == "retried" or "it is queued" in refusal, refusal
    now = backend.now()
    records = [backend.get(i, now) for i in ids]
    assert {(r.state, r.attempts, r.deliveries, len(r.history)) for r in records} == {
        ("queued", 1, 1, 1)
    }
    assert len({r.seq for r in records}) == jobs
    assert backend.stats(now).counts == {("queued", "held"): jobs}
