"""What a large put keeps when it fails part-way, on the backends whose unit is the whole
call, and where each backend's unit is written down.

``Backend.put`` names the atomic unit of each backend (its ``put_unit``) and what a
failure part-way leaves. Each backend is held to its own unit by a real failure of its
store where one can be produced here:

* memory, the whole call: a record that cannot be copied fails the call (below);
* SQLite, the whole call: the file is full part-way through the transaction (below);
* Redis, PUT_CHUNK jobs: Redis runs out of memory (``tests/test_redis_backend.py``);
* MongoDB, each job: a validator refuses one document (``tests/test_mongo_backend.py``);
* FoundationDB, PUT_BYTES of records: the second transaction keeps conflicting with a
  rival until it runs out of retries (``tests/test_fdb_cluster_path.py``).

What holds on every backend (putting the same ids again completes a call, stored ids are
left untouched) is in the contract suite, ``tests/contract/test_jobs.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from skunkqueue.errors import BackendUnavailable
from skunkqueue.persistence import open_backend
from skunkqueue.persistence.base import Backend
from skunkqueue.persistence.fdb import FoundationDBBackend
from skunkqueue.persistence.memory import MemoryBackend
from skunkqueue.persistence.mongodb import MongoBackend
from skunkqueue.persistence.redis import RedisBackend
from skunkqueue.persistence.sqlite import SQLiteBackend

from .contract.support import T0, ids, job

README = Path(__file__).resolve().parents[1] / "README.md"
BACKENDS = [MemoryBackend, SQLiteBackend, RedisBackend, MongoBackend, FoundationDBBackend]


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_put_and_the_readme_name_each_backends_unit_as_the_backend_states_it() -> None:
    contract = one_line(Backend.put.__doc__ or "")
    readme = one_line(README.read_text())
    for backend in BACKENDS:
        name, unit = backend.store_name, backend.put_unit
        assert f'{name}, "{unit}"' in contract, (name, unit)
        assert f"- {name}: {unit}" in readme, (name, unit)


# -- memory: one lock, every record copied before any is stored ----------------------------


def test_memory_stores_nothing_of_a_call_whose_last_record_cannot_be_copied() -> None:
    backend = open_backend(f"memory://{uuid.uuid4().hex}", "q")
    jobs = [job(f"j{i}") for i in range(5)]
    uncopyable = job("last", retry={"lock": threading.Lock()})  # passes the input checks
    with pytest.raises(TypeError, match="pickle"):  # deepcopy's refusal, not a check's
        backend.put([*jobs, uncopyable], T0)
    assert backend.list_jobs(T0) == []
    assert backend.stats(T0).counts == {}
    assert backend.put(jobs, T0) == [True] * len(jobs)


# -- SQLite: one transaction ---------------------------------------------------------------


def test_sqlite_full_part_way_through_a_put_stores_nothing_of_it(tmp_path: Path) -> None:
    """``max_page_count`` on the backend's own connection (the limit is per connection)
    makes the file full after some of the call's rows: SQLite refuses the next insert with
    SQLITE_FULL and the transaction is rolled back whole."""
    backend = open_backend(f"sqlite:///{tmp_path}/jobs.db", "q")
    db: sqlite3.Connection = backend._db  # type: ignore[attr-defined]
    try:
        assert backend.put([job("first")], T0) == [True]
        jobs = [job(f"j{i:04}", payload=f'"{i:01000}"') for i in range(500)]
        unlimited = db.execute("PRAGMA max_page_count").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 20}")  # some 80 kB: not 500 kB
        inserts: list[str] = []
        db.set_trace_callback(lambda sql: inserts.append(sql) if "INSERT" in sql else None)
        with pytest.raises(
            BackendUnavailable, match="SQLite at .*: database or disk is full"
        ) as raised:
            backend.put(jobs, T0)
        db.set_trace_callback(None)
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        assert 1 < len(inserts) < len(jobs)  # refused part-way through the call

        db.execute(f"PRAGMA max_page_count = {unlimited}")
        assert ids(backend.list_jobs(T0, limit=1000)) == ["first"]
        assert backend.stats(T0).counts == {("queued", "default"): 1}
        assert backend.put([job("first"), *jobs], T0) == [False] + [True] * len(jobs)
        assert ids(backend.list_jobs(T0, limit=1000)) == ["first", *ids(jobs)]
    finally:
        backend.close()
