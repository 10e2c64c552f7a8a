"""The real-cluster path of the FoundationDB backend, as far as it runs without a cluster.

No FoundationDB client library (``libfdb_c``) can be installed here, so ``fdb://`` never
reaches a cluster in these tests. What does run: the cluster path's own retry loop
(``fdb.run_transaction``), driven by simulator transactions that conflict for real and by
a tiny transaction that fails on cue; the URL's limits; and ``open_cluster`` end to end
with the binding's module replaced by the simulator (``stand_in_binding``), so the
backend's verbs go through the bounded loop exactly as they would on a cluster (among
them a put of several transactions whose second one a rival makes fail).
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from skunkqueue.errors import BackendUnavailable, ConfigurationError, LeaseLost
from skunkqueue.persistence import fdb as fdb_backend
from skunkqueue.persistence.fdb import FoundationDBBackend, open_cluster, run_transaction
from skunkqueue.testing.fdb_sim import (
    MAX_VALUE_SIZE,
    FDBError,
    SimDatabase,
    SimFuture,
    SimTransaction,
)

from .contract.support import T0, job
from .servers import REPO_ROOT


class Options:
    """The binding's ``tr.options``, recording what was set (the simulator ignores it)."""

    def __init__(self) -> None:
        self.set: dict[str, int] = {}

    def set_timeout(self, milliseconds: int) -> None:
        self.set["timeout"] = milliseconds

    def set_retry_limit(self, retries: int) -> None:
        self.set["retry_limit"] = retries


class ClusterLikeTransaction(SimTransaction):
    """A simulator transaction with the binding's ``options``; while its database says
    ``refuse_commits``, every commit with writes fails with 1020 (a conflict). Writers
    (transactions that commit writes) are numbered from 0 in the order of their first
    commit; before each commit of writer number ``rival_at``, a rival transaction writes
    a key the writer read, a real conflict (1020, found by the simulator) on every
    attempt, while the writers before and after it are left alone."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.options = Options()
        self.writer: int | None = None  # its number among the writers (kept across retries)

    def commit(self) -> SimFuture:
        db = self._db
        if getattr(db, "refuse_commits", False) and self._writes:
            return SimFuture.ready(error=FDBError(1020))
        if self._writes and self.writer is None:
            self.writer, db.writers = db.writers, db.writers + 1
        if self._writes and self._reads and self.writer == db.rival_at:
            rival = SimTransaction(db)
            rival.clear(self._reads[0][0])  # a write, even where there is no key
            rival.commit().wait()
        return super().commit()


class ClusterLikeDatabase(SimDatabase):
    def __init__(self) -> None:
        super().__init__()
        self.refuse_commits = False
        self.writers = 0
        self.rival_at: int | None = None
        self.transactions: list[ClusterLikeTransaction] = []

    def create_transaction(self) -> ClusterLikeTransaction:  # type: ignore[override]
        self.transactions.append(ClusterLikeTransaction(self))
        return self.transactions[-1]


def bounded(db: ClusterLikeDatabase, fn: Callable[..., Any], retry_limit: int = 3) -> Any:
    return run_transaction(
        db.create_transaction, fn, timeout=5.0, retry_limit=retry_limit, error=FDBError
    )


# -- the loop, on simulator transactions --------------------------------------------------


def test_a_conflict_on_every_attempt_ends_in_backend_unavailable_after_the_limit() -> None:
    db = ClusterLikeDatabase()
    attempts = []

    def read_then_lose(tr: SimTransaction) -> None:
        attempts.append(1)
        tr.get(b"k")  # a read conflict on k ...
        rival = db.create_transaction()
        rival.set(b"k", b"rival %d" % len(attempts))  # ... which a rival then writes
        rival.commit().wait()
        tr.set(b"mine", b"x")

    with pytest.raises(BackendUnavailable, match="not committed after 3 retries") as caught:
        bounded(db, read_then_lose, retry_limit=3)
    assert len(attempts) == 4  # the first try and 3 retries, then no more
    assert isinstance(caught.value.__cause__, FDBError) and caught.value.__cause__.code == 1020
    assert not db.create_transaction().get(b"mine").present()
    assert db.transactions[0].options.set == {"timeout": 5000, "retry_limit": 3}


def test_a_transaction_that_commits_on_a_retry_returns_its_result() -> None:
    db = ClusterLikeDatabase()
    attempts = []

    def lose_twice(tr: SimTransaction) -> int:
        attempts.append(1)
        seen = tr.get(b"k")
        if len(attempts) <= 2:
            rival = db.create_transaction()
            rival.set(b"k", b"rival %d" % len(attempts))
            rival.commit().wait()
        tr.set(b"mine", bytes(seen) if seen.present() else b"absent")
        return len(attempts)

    assert bounded(db, lose_twice, retry_limit=3) == 3
    assert db.create_transaction().get(b"mine") == b"rival 2"


def test_an_error_on_error_will_not_retry_propagates_as_it_is() -> None:
    db = ClusterLikeDatabase()
    attempts = []

    def too_big(tr: SimTransaction) -> None:
        attempts.append(1)
        tr.set(b"k", b"x" * (MAX_VALUE_SIZE + 1))  # 2103: a misuse, not an outage

    with pytest.raises(FDBError) as caught:
        bounded(db, too_big)
    assert caught.value.code == 2103 and len(attempts) == 1


def test_an_exception_of_our_own_is_raised_without_a_retry() -> None:
    db = ClusterLikeDatabase()
    attempts = []

    def deposed(tr: SimTransaction) -> None:
        attempts.append(1)
        raise LeaseLost("lease 'scheduler' is no longer held by w")

    with pytest.raises(LeaseLost):
        bounded(db, deposed)
    assert len(attempts) == 1


# -- the loop, on a transaction that fails on cue ------------------------------------------


class Scripted:
    """A transaction whose commits fail with the given codes in turn, then succeed.
    ``on_error`` retries every code, unless ``times_out_in_backoff``: then it raises 1031,
    as the binding does when the timeout elapses while it backs off."""

    def __init__(self, commit_codes: list[int], times_out_in_backoff: bool = False) -> None:
        self.options = Options()
        self.commit_codes = commit_codes
        self.times_out_in_backoff = times_out_in_backoff
        self.handed: list[int] = []  # the codes passed to on_error

    def commit(self) -> SimFuture:
        code = self.commit_codes.pop(0) if self.commit_codes else 0
        return SimFuture.ready(error=FDBError(code) if code else None)

    def on_error(self, err: FDBError) -> SimFuture:
        self.handed.append(err.code)
        return SimFuture.ready(error=FDBError(1031) if self.times_out_in_backoff else None)


def scripted_run(tr: Scripted, retry_limit: int = 5) -> Any:
    return run_transaction(
        lambda: tr, lambda _: "done", timeout=0.25, retry_limit=retry_limit, error=FDBError
    )


def test_retryable_errors_are_retried_until_the_limit_and_no_further() -> None:
    tr = Scripted([1020, 1037, 1020])
    assert scripted_run(tr) == "done"
    assert tr.handed == [1020, 1037, 1020]
    assert tr.options.set == {"timeout": 250, "retry_limit": 5}

    endless = Scripted([1020] * 100)
    with pytest.raises(BackendUnavailable, match="after 5 retries") as caught:
        scripted_run(endless)
    assert endless.handed == [1020] * 5
    assert caught.value.__cause__.code == 1020


def test_a_timed_out_transaction_is_unavailable_at_once() -> None:
    tr = Scripted([1031])  # the binding's timeout cancelled the transaction
    with pytest.raises(BackendUnavailable, match=r"timed out after 0\.25 s") as caught:
        scripted_run(tr)
    assert tr.handed == [] and caught.value.__cause__.code == 1031
    # The timeout can also elapse in on_error's backoff: on_error then raises 1031.
    backing_off = Scripted([1020], times_out_in_backoff=True)
    with pytest.raises(BackendUnavailable, match="timed out") as caught:
        scripted_run(backing_off)
    assert backing_off.handed == [1020] and caught.value.__cause__.code == 1031


def test_a_limit_of_no_retries_gives_up_on_the_first_error() -> None:
    tr = Scripted([1020])
    with pytest.raises(BackendUnavailable, match="after 0 retries"):
        scripted_run(tr, retry_limit=0)
    assert tr.handed == []


# -- open_cluster: the URL, and the backend over the bounded loop --------------------------


@pytest.fixture
def stand_in_binding(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """``import fdb`` gives a module with the binding's names over a ClusterLikeDatabase:
    ``open`` records the cluster file, the directory layer hands out its prefix."""
    import fdb.tuple as tuple_layer  # needs no libfdb_c

    opened = types.SimpleNamespace(db=ClusterLikeDatabase(), files=[], versions=[])

    def create_or_open(tr: Any, path: tuple) -> Any:
        tr.get(b"\xfe" + tuple_layer.pack(path))  # it reads in the caller's transaction
        return types.SimpleNamespace(key=lambda: tuple_layer.pack(("dir",) + path))

    def open_database(cluster_file: str | None) -> ClusterLikeDatabase:
        opened.files.append(cluster_file)
        return opened.db

    binding = types.ModuleType("fdb")
    binding.tuple = tuple_layer  # type: ignore[attr-defined]
    binding.api_version = opened.versions.append  # type: ignore[attr-defined]
    binding.open = open_database  # type: ignore[attr-defined]
    binding.FDBError = FDBError  # type: ignore[attr-defined]
    binding.directory = types.SimpleNamespace(create_or_open=create_or_open)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fdb", binding)
    return opened


def test_the_backend_runs_its_verbs_in_the_bounded_loop(stand_in_binding) -> None:
    url = "fdb:///etc/foundationdb/test.cluster?timeout=2&retry_limit=4"
    backend = FoundationDBBackend(url, "q")
    assert stand_in_binding.files == ["/etc/foundationdb/test.cluster"]
    assert stand_in_binding.versions == [fdb_backend.API_VERSION]
    assert backend.shared_across_processes
    assert backend.put([job("a")], T0) == [True]
    assert [r.id for r in backend.claim(["default"], "w", T0, 30)] == ["a"]
    for tr in stand_in_binding.db.transactions:
        assert tr.options.set == {"timeout": 2000, "retry_limit": 4}

    stand_in_binding.db.refuse_commits = True  # every write now conflicts, forever
    with pytest.raises(BackendUnavailable, match="not committed after 4 retries") as caught:
        backend.put([job("b")], T0)
    assert caught.value.__cause__.code == 1020
    stand_in_binding.db.refuse_commits = False
    assert backend.get("b", T0) is None


def test_a_put_whose_second_transaction_fails_keeps_the_first_and_a_second_put_completes_it(
    stand_in_binding,
) -> None:
    """A put's unit on FoundationDB is one transaction of whole jobs, at most PUT_BYTES of
    records. Here a call needs three, and a rival writes a key the second one read
    before each of its commits, until its retries run out. The first transaction's jobs
    stay written, none of the second's, nor of the third's (the rival would have let it
    commit: it never began), and putting the same jobs again stores the rest."""
    backend = FoundationDBBackend("fdb://?retry_limit=2", "q")
    jobs = [job(f"j{i:02}", payload=f'"{i:050000}"') for i in range(45)]  # 2.25 MB
    db = stand_in_binding.db
    db.rival_at = db.writers + 1  # the put's second transaction

    with pytest.raises(BackendUnavailable, match="not committed after 2 retries") as caught:
        backend.put(jobs, T0)
    assert caught.value.__cause__.code == 1020

    db.rival_at = None
    stored = [backend.get(j.id, T0) for j in jobs]
    first = sum(r is not None for r in stored)
    assert all(r is not None for r in stored[:first])  # a prefix of the call ...
    assert all(r is None for r in stored[first:])
    record_bytes = len(FoundationDBBackend._encode(stored[0]))  # every record's size here
    assert first * record_bytes <= fdb_backend.PUT_BYTES < (first + 1) * record_bytes
    assert len(jobs) > 2 * first  # ... the first of the three transactions the call needs
    assert all(r.payload == j.payload for r, j in zip(stored[:first], jobs, strict=False))

    assert backend.put(jobs, T0) == [r is None for r in stored]
    assert [r.id for r in backend.list_jobs(T0, limit=100)] == [j.id for j in jobs]
    assert backend.stats(T0).counts == {("queued", "default"): len(jobs)}


def test_the_default_limits_and_the_default_cluster_file(stand_in_binding) -> None:
    FoundationDBBackend("fdb://", "q")
    assert stand_in_binding.files == [None]
    limits = {"timeout": round(fdb_backend.TIMEOUT * 1000), "retry_limit": fdb_backend.RETRY_LIMIT}
    assert stand_in_binding.db.transactions[0].options.set == limits


@pytest.mark.parametrize(
    "url, call_timeout, milliseconds",
    [
        ("fdb://?timeout=20", 1.5, 1500),  # the bound, below the URL's timeout
        ("fdb://?timeout=1", 1.5, 1000),  # the URL's, below the bound
        ("fdb://", 60.0, round(fdb_backend.TIMEOUT * 1000)),  # never above the default
        ("fdb://", None, round(fdb_backend.TIMEOUT * 1000)),
    ],
)
def test_a_call_timeout_lowers_every_transactions_timeout_and_never_raises_it(
    stand_in_binding, url: str, call_timeout: float | None, milliseconds: int
) -> None:
    backend = FoundationDBBackend(url, "q", call_timeout=call_timeout)
    backend.put([job("a")], T0)
    assert [r.id for r in backend.claim(["default"], "w", T0, 30)] == ["a"]
    assert backend.renew("w", T0 + 1, 30, ["a"]) == {"a"}
    timeouts = {tr.options.set["timeout"] for tr in stand_in_binding.db.transactions}
    assert timeouts == {milliseconds}


@pytest.mark.parametrize(
    "url, message",
    [
        ("fdb://?timeout=soon", "could not convert"),
        ("fdb://?timeout=0", "positive number of seconds"),
        ("fdb://?retry_limit=-1", "count of 0 or more"),
        ("fdb://?retry_limit=2.5", "invalid literal"),
        ("fdb://?timout=5", "unknown option timout"),
        ("fdbsim://x", "opens fdb:// URLs"),
    ],
)
def test_a_bad_url_is_refused_before_the_binding_is_touched(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_cluster(url, "q", lambda items: b"")


def test_importing_the_backend_imports_nothing_of_the_simulator() -> None:
    code = (
        "import sys, skunkqueue.persistence, skunkqueue.persistence.fdb\n"
        "print(sorted(m for m in sys.modules if 'fdb_sim' in m or 'testing' in m))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
