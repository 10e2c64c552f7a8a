"""No job is handed to two claimers, and one lease has one holder, under real concurrency.

Threads each open their own ``Backend`` on the store (separate connections where the
backend has them); processes do the same for backends shared across processes. Every
claimer starts at a barrier so they really contend, and every wait has a deadline.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import threading
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from skunkqueue.jobs import Outcome
from skunkqueue.persistence import open_backend

from .support import T0, job

ROUTES = ["a", "b", "c"]
DEADLINE = 20.0  # seconds; each drain takes well under one


def _fill(backend, n):
    jobs = [job(f"job-{i:04d}", route=ROUTES[i % len(ROUTES)], eta=T0 - (i % 7)) for i in range(n)]
    assert backend.put(jobs, now=T0) == [True] * n
    return {j.id for j in jobs}


def _drain(backend, owner, start):
    """Claim until the queue is empty; finish every other batch so writers of both kinds contend."""
    claimed = []
    start.wait(DEADLINE)
    batch = 1
    while True:
        taken = backend.claim(ROUTES, owner, T0, lease=300, limit=batch)
        if not taken:
            return claimed
        for record in taken:
            assert (record.state, record.owner, record.deliveries) == ("running", owner, 1)
        claimed += [r.id for r in taken]
        if batch % 2:
            answers = backend.finish([Outcome(r.id, "complete") for r in taken], owner, T0)
            assert answers == [True] * len(taken)
        batch = batch % 3 + 1  # 1, 2, 3, 1, ...


def _assert_each_claimed_once(all_ids, claims_by_owner, backend):
    counts = Counter(i for claimed in claims_by_owner.values() for i in claimed)
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert twice == [], f"jobs handed to more than one claimer: {twice[:10]}"
    assert set(counts) == all_ids
    assert sum(counts.values()) == len(all_ids)
    owner_of = {i: owner for owner, claimed in claims_by_owner.items() for i in claimed}
    records = backend.list_jobs(T0, limit=len(all_ids) + 1)
    assert len(records) == len(all_ids)
    for record in records:
        assert record.deliveries == 1, record
        if record.state == "running":
            assert record.owner == owner_of[record.id], record
        else:
            assert (record.state, record.owner, record.attempts) == ("complete", None, 1), record
    assert backend.claim(ROUTES, "late", T0, lease=300, limit=10) == []


def _in_threads(n, fn):
    """Run ``fn(index)`` in ``n`` threads; return the results, re-raising the first error."""
    pool = ThreadPoolExecutor(max_workers=n)
    try:
        futures = [pool.submit(fn, i) for i in range(n)]
        return [f.result(timeout=DEADLINE) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_threads_never_claim_the_same_job(store):
    backend = store.open()
    all_ids = _fill(backend, store.spec.contention_jobs)
    n_threads = 6
    instances = [store.open() for _ in range(n_threads)]  # opening is not what is measured
    start = threading.Barrier(n_threads)

    def run(index):
        return _drain(instances[index], f"thread-{index}", start)

    claims = dict(enumerate(_in_threads(n_threads, run)))
    _assert_each_claimed_once(all_ids, {f"thread-{i}": c for i, c in claims.items()}, backend)


def _claim_in_process(url, queue, owner, start, results):
    backend = open_backend(url, queue)
    try:
        results.put((owner, _drain(backend, owner, start), None))
    except BaseException:
        results.put((owner, [], traceback.format_exc()))
        raise
    finally:
        backend.close()


def test_processes_never_claim_the_same_job(store):
    backend = store.open()
    if not backend.shared_across_processes:
        pytest.skip(f"{store.spec.id}: shared_across_processes is False (one process only)")
    all_ids = _fill(backend, store.spec.contention_jobs)
    n_procs = 4
    ctx = multiprocessing.get_context("spawn")  # no inherited locks or connections
    start = ctx.Barrier(n_procs)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_claim_in_process,
            args=(store.url, store.queue, f"proc-{i}", start, results),
            daemon=True,
        )
        for i in range(n_procs)
    ]
    for p in procs:
        p.start()
    try:
        claims = {}
        for _ in procs:
            try:
                owner, claimed, error = results.get(timeout=DEADLINE)
            except queue_module.Empty:
                pytest.fail(f"only {len(claims)} of {n_procs} claiming processes reported in time")
            assert error is None, f"{owner} failed:\n{error}"
            claims[owner] = claimed
        for p in procs:
            p.join(DEADLINE)
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert sorted(claims) == [f"proc-{i}" for i in range(n_procs)]
    assert sum(1 for claimed in claims.values() if claimed) >= 2, (
        "only one process got any jobs: the test did not exercise contention"
    )
    _assert_each_claimed_once(all_ids, claims, backend)


def test_one_lease_one_holder_under_contention(store):
    n_threads = 8
    instances = [store.open() for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def run(index):
        start.wait(DEADLINE)
        return instances[index].acquire_lease("leader", f"cand-{index}", T0, ttl=30)

    won = [lease for lease in _in_threads(n_threads, run) if lease is not None]
    assert len(won) == 1, won
    assert instances[0].leases("leader", T0) == won
