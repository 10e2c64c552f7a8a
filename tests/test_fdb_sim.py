"""The FoundationDB simulator behaves like FoundationDB where the backend depends on it.

Races are forced with barriers, not sleeps: both transactions have read before either
commits, so exactly one of them must lose.
"""

from __future__ import annotations

import select
import signal
import struct
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from skunkqueue.testing.fdb_sim import (
    FDBError,
    KeyValue,
    SimDatabase,
    SimServer,
    SimTransaction,
    connect,
    is_retryable,
    transactional,
)

from .drivers import require
from .servers import REPO_ROOT, stop_process
from .waiting import wait_until

ONE = struct.pack("<q", 1)


def counter(tr: SimTransaction, key: bytes = b"counter") -> int:
    value = tr.get(key)
    return struct.unpack("<q", bytes(value))[0] if value.present() else 0


def increment(tr: SimTransaction, key: bytes = b"counter") -> int:
    n = counter(tr, key) + 1
    tr.set(key, struct.pack("<q", n))
    return n


def commit_code(tr: SimTransaction) -> int:
    """0 if ``tr`` commits, else the FDBError code."""
    try:
        tr.commit().wait()
    except FDBError as err:
        return err.code
    return 0


def race(*steps: Callable[[SimTransaction], object], db: Any) -> list[int]:
    """Each step reads and writes in its own transaction on its own thread; all have read
    before any commits. Returns each thread's commit result (see ``commit_code``)."""
    barrier = threading.Barrier(len(steps))
    codes = [-1] * len(steps)

    def run(i: int) -> None:
        tr = db.create_transaction()
        steps[i](tr)
        barrier.wait(timeout=10)
        codes[i] = commit_code(tr)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return codes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db() -> SimDatabase:
    return SimDatabase()


def put(db: SimDatabase, **items: bytes) -> None:
    tr = db.create_transaction()
    for key, value in items.items():
        tr.set(key.encode(), value)
    tr.commit().wait()


# -- isolation -----------------------------------------------------------------------------


def test_lost_update_is_caught(db: SimDatabase) -> None:
    codes = race(increment, increment, db=db)
    assert sorted(codes) == [0, 1020]
    assert counter(db.create_transaction()) == 1


def test_retry_loop_applies_every_increment(db: SimDatabase) -> None:
    barrier = threading.Barrier(2)

    def increment_after_both_read(tr: SimTransaction) -> int:
        n = increment(tr)
        if not tr.get(b"first-try").present():  # only the first attempt waits
            tr.set(b"first-try", b"")
            barrier.wait(timeout=10)
        return n

    threads = [
        threading.Thread(target=transactional, args=(db, increment_after_both_read))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert counter(db.create_transaction()) == 2


def on_call_doctor(me: bytes, other: bytes, snapshot: bool = False) -> Callable:
    def step(tr: SimTransaction) -> None:
        reader = tr.snapshot if snapshot else tr
        if reader.get(me) == b"on" and reader.get(other) == b"on":
            tr.set(me, b"off")

    return step


def test_write_skew_is_caught(db: SimDatabase) -> None:
    put(db, alice=b"on", bob=b"on")
    codes = race(on_call_doctor(b"alice", b"bob"), on_call_doctor(b"bob", b"alice"), db=db)
    assert sorted(codes) == [0, 1020]
    tr = db.create_transaction()
    assert [tr.get(b"alice"), tr.get(b"bob")].count(b"on") == 1


def test_snapshot_reads_add_no_conflicts(db: SimDatabase) -> None:
    put(db, alice=b"on", bob=b"on")
    steps = on_call_doctor(b"alice", b"bob", True), on_call_doctor(b"bob", b"alice", True)
    assert race(*steps, db=db) == [0, 0]
    tr = db.create_transaction()
    assert tr.get(b"alice") == tr.get(b"bob") == b"off"  # write skew, as snapshot allows


def test_explicit_read_conflict_range_makes_snapshot_reads_conflict(db: SimDatabase) -> None:
    put(db, alice=b"on", bob=b"on")

    def guarded(me: bytes, other: bytes) -> Callable:
        def step(tr: SimTransaction) -> None:
            tr.add_read_conflict_range(b"alice", b"bob\x00")
            on_call_doctor(me, other, snapshot=True)(tr)

        return step

    assert sorted(race(guarded(b"alice", b"bob"), guarded(b"bob", b"alice"), db=db)) == [0, 1020]


def test_transaction_reads_one_snapshot(db: SimDatabase) -> None:
    put(db, a=b"1", b=b"1")
    reader = db.create_transaction()
    assert reader.get(b"a") == b"1"
    put(db, a=b"2", b=b"2", c=b"2")
    assert reader.get(b"b") == b"1"
    assert reader.get_range(b"a", b"z") == [KeyValue(b"a", b"1"), KeyValue(b"b", b"1")]
    assert commit_code(reader) == 0  # read-only: always commits


def test_limited_read_conflicts_only_up_to_its_last_key(db: SimDatabase) -> None:
    put(db, a=b"1", b=b"1", c=b"1")
    for written, expected in [(b"d", 0), (b"c", 0), (b"b", 1020), (b"a", 1020)]:
        tr = db.create_transaction()
        assert [kv.key for kv in tr.get_range(b"a", b"z", limit=2)] == [b"a", b"b"]
        tr.set(b"other", b"")
        put(db, **{written.decode(): b"2"})
        assert commit_code(tr) == expected, written


# -- reads, writes and read-your-writes ------------------------------------------------------


def test_read_your_writes(db: SimDatabase) -> None:
    put(db, a=b"1", b=b"1", c=b"1", d=b"1", e=b"1")
    tr = db.create_transaction()
    assert not tr.get(b"zz").present()
    assert tr.get(b"zz") == None  # noqa: E711 - the binding's Value compares equal to None
    tr.set(b"a", b"2")
    tr.clear(b"b")
    tr.clear_range(b"c", b"e")
    tr.set(b"cc", b"new")  # after the clear_range, so it stays
    tr.add(b"e", ONE)  # over a value this transaction never read
    tr.add(b"f", ONE)
    assert tr.get(b"a") == b"2"
    assert not tr.get(b"b").present()
    assert not tr.get(b"c").present()
    assert tr.get(b"e") == b"2\x00\x00\x00\x00\x00\x00\x00"  # '1' is 0x31; +1
    assert tr.snapshot.get(b"cc") == b"new"
    expected = [(b"a", b"2"), (b"cc", b"new"), (b"e", b"2" + bytes(7)), (b"f", ONE)]
    assert tr.get_range(b"", b"\xff") == expected
    assert tr.get_range(b"", b"\xff", limit=2) == expected[:2]
    assert tr.get_range(b"", b"\xff", limit=3, reverse=True) == expected[::-1][:3]
    assert tr.snapshot.get_range(b"b", b"e") == expected[1:2]
    tr.commit().wait()
    assert db.create_transaction().get_range(b"", b"\xff").to_list() == expected


def test_limit_and_reverse_skip_cleared_keys(db: SimDatabase) -> None:
    put(db, **{f"k{i:02}": b"v" for i in range(20)})
    tr = db.create_transaction()
    for i in range(0, 20, 2):
        tr.clear(f"k{i:02}".encode())
    tr.clear_range(b"k10", b"k15")
    keys = [kv.key for kv in tr.get_range(b"k", b"l", limit=3)]
    assert keys == [b"k01", b"k03", b"k05"]
    keys = [kv.key for kv in tr.get_range(b"k", b"l", limit=4, reverse=True)]
    assert keys == [b"k19", b"k17", b"k15", b"k09"]
    assert tr.get_range(b"k05", b"k05") == []


def test_atomic_add_semantics(db: SimDatabase) -> None:
    tr = db.create_transaction()
    tr.add(b"missing", b"\x05\x00")
    tr.set(b"short", b"\xff")
    tr.add(b"short", b"\x01\x00\x00")  # extended with zeros: 0xff + 1
    tr.set(b"long", b"\x01\x02\x03\x04")
    tr.add(b"long", b"\x01")  # truncated to one byte
    tr.set(b"wrap", b"\xff\xff")
    tr.add(b"wrap", b"\x01\x00")
    tr.commit().wait()
    tr = db.create_transaction()
    assert tr.get(b"missing") == b"\x05\x00"
    assert tr.get(b"short") == b"\x00\x01\x00"
    assert tr.get(b"long") == b"\x02"
    assert tr.get(b"wrap") == b"\x00\x00"


def test_atomic_add_from_many_threads_never_conflicts(db: SimDatabase) -> None:
    errors: list[BaseException] = []

    def adder() -> None:
        try:
            for _ in range(200):
                tr = db.create_transaction()
                tr.add(b"hits", ONE)
                tr.commit().wait()  # any FDBError here is a conflict that must not happen
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=adder) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == []
    assert counter(db.create_transaction(), b"hits") == 1600


def test_a_blind_add_does_not_conflict_with_a_concurrent_reader(db: SimDatabase) -> None:
    reader = db.create_transaction()
    reader.get(b"hits")
    reader.set(b"elsewhere", b"")
    adder = db.create_transaction()
    adder.add(b"hits", ONE)
    adder.commit().wait()
    assert commit_code(reader) == 1020  # the reader did read it
    adders = [db.create_transaction() for _ in range(2)]
    for tr in adders:
        tr.get_read_version().wait()  # both read versions precede both commits
        tr.add(b"hits", ONE)
    assert [commit_code(tr) for tr in adders] == [0, 0]


def test_many_threads_claim_each_key_exactly_once(db: SimDatabase) -> None:
    """Eight threads drain 300 keys, each key taken by one transaction. The competition is
    forced, not hoped for: every thread's first attempt reads the head before any of them
    commits, so seven of those eight must conflict and retry; and no thread drains on until
    every thread holds a key, so one thread cannot empty the queue alone."""
    tr = db.create_transaction()
    keys = [b"q/%04d" % i for i in range(300)]
    for key in keys:
        tr.set(key, b"job")
    tr.commit().wait()
    threads_n = 8
    taken: list[list[bytes]] = [[] for _ in range(threads_n)]
    attempts = [0] * threads_n
    everyone_read = threading.Barrier(threads_n)  # inside each thread's first attempt
    everyone_took_one = threading.Barrier(threads_n)

    def take_first(tr: SimTransaction, i: int) -> bytes | None:
        attempts[i] += 1
        first = tr.get_range(b"q/", b"q0", limit=1)
        if attempts[i] == 1:
            everyone_read.wait(timeout=10)
        if not first:
            return None
        tr.clear(first[0].key)
        return first[0].key

    def worker(i: int) -> None:
        key = transactional(db, take_first, i)
        assert key is not None
        taken[i].append(key)
        everyone_took_one.wait(timeout=10)
        while (key := transactional(db, take_first, i)) is not None:
            taken[i].append(key)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    everything = [key for mine in taken for key in mine]
    assert sorted(everything) == keys  # each exactly once
    assert all(taken)  # every thread took keys
    calls = len(everything) + threads_n  # each thread's last call found the queue empty
    assert sum(attempts) - calls >= threads_n - 1  # the seven losers of the first race retried


# -- versionstamps ---------------------------------------------------------------------------


def stamped_key(prefix: bytes, suffix: bytes = b"") -> bytes:
    """prefix + 10-byte placeholder + suffix + the placeholder's offset (API 520+)."""
    return prefix + b"\xff" * 10 + suffix + struct.pack("<I", len(prefix))


def test_versionstamped_keys_are_unique_and_in_commit_order(db: SimDatabase) -> None:
    stamps: list[list[bytes]] = [[] for _ in range(4)]

    def writer(i: int) -> None:
        for n in range(50):
            tr = db.create_transaction()
            tr.set_versionstamped_key(stamped_key(b"log/", b"/%d" % i), b"%d:%d" % (i, n))
            stamp = tr.get_versionstamp()
            tr.commit().wait()
            stamps[i].append(stamp.wait())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    rows = db.create_transaction().get_range(b"log/", b"log0")
    assert len(rows) == 200
    by_stamp = {kv.key[4:14]: kv.value for kv in rows}
    assert len(by_stamp) == 200
    for i, mine in enumerate(stamps):
        assert mine == sorted(mine)  # one thread's commits come in order
        assert [by_stamp[s] for s in mine] == [b"%d:%d" % (i, n) for n in range(50)]
    version, batch = struct.unpack(">QH", rows[-1].key[4:14])
    assert batch == 0 and version == db.create_transaction().get_read_version().wait()


def test_versionstamped_key_offset_matches_the_binding(
    db: SimDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdb_tuple = require("fdb.tuple")
    fdb = sys.modules["fdb"]

    if "impl" not in vars(fdb):
        # Versionstamp.to_bytes checks isinstance(x, fdb.impl.Value), and fdb.impl needs
        # libfdb_c; a class nothing is an instance of stands in for it.
        monkeypatch.setattr(
            fdb, "impl", types.SimpleNamespace(Value=type("Value", (), {})), raising=False
        )
    key = fdb_tuple.pack_with_versionstamp(("jobs", fdb_tuple.Versionstamp(user_version=7)), b"P")
    tr = db.create_transaction()
    tr.set_versionstamped_key(key, b"payload")
    stamp = tr.get_versionstamp()
    tr.commit().wait()
    (stored,) = db.create_transaction().get_range(b"P", b"Q")
    name, versionstamp = fdb_tuple.unpack(stored.key, prefix_len=1)
    assert name == "jobs" and versionstamp.is_complete()
    assert versionstamp.tr_version == stamp.wait() and versionstamp.user_version == 7


def test_versionstamped_writes_are_unreadable_until_committed(db: SimDatabase) -> None:
    tr = db.create_transaction()
    tr.set_versionstamped_key(stamped_key(b"log/"), b"x")
    with pytest.raises(FDBError) as caught:
        tr.get_range(b"log/", b"log0")
    assert caught.value.code == 1036
    assert tr.get_range(b"a", b"b") == []  # elsewhere is fine


def test_versionstamped_key_conflicts_with_a_reader_of_its_range(db: SimDatabase) -> None:
    reader = db.create_transaction()
    assert reader.get_range(b"log/", b"log0") == []
    reader.set(b"saw-empty-log", b"")
    writer = db.create_transaction()
    writer.set_versionstamped_key(stamped_key(b"log/"), b"x")
    writer.commit().wait()
    assert commit_code(reader) == 1020


# -- watches ---------------------------------------------------------------------------------


def test_watch_fires_after_a_change_and_not_before(db: SimDatabase) -> None:
    put(db, w=b"1")
    tr = db.create_transaction()
    assert tr.get(b"w") == b"1"
    watch = tr.watch(b"w")
    fired_in_thread = threading.Event()
    waiter = threading.Thread(target=lambda: watch.wait(10) and fired_in_thread.set())
    waiter.start()
    assert not watch.is_ready()  # not registered before its transaction commits
    tr.commit().wait()
    put(db, other=b"x")
    put(db, w=b"1")  # a write of the same value is no change
    assert not watch.is_ready() and not fired_in_thread.is_set()
    put(db, w=b"2")
    waiter.join(timeout=10)
    assert fired_in_thread.is_set() and watch.fired and watch.wait(0) is True


def test_watch_fires_at_commit_when_the_key_changed_after_it_was_read(db: SimDatabase) -> None:
    put(db, w=b"1")
    tr = db.create_transaction()
    tr.get(b"w")
    watch = tr.watch(b"w")
    put(db, w=b"2")
    tr.commit().wait()
    assert watch.wait(5) is True


def test_watch_on_a_key_the_transaction_writes_compares_with_its_write(db: SimDatabase) -> None:
    tr = db.create_transaction()
    tr.set(b"w", b"mine")
    watch = tr.watch(b"w")
    tr.commit().wait()
    assert not watch.is_ready()
    tr = db.create_transaction()
    tr.clear(b"w")
    tr.commit().wait()
    assert watch.wait(5) is True


def test_cancelled_watch_does_not_fire(db: SimDatabase) -> None:
    tr = db.create_transaction()
    watch = tr.watch(b"w")
    tr.commit().wait()
    callbacks: list[object] = []
    watch.on_ready(callbacks.append)
    watch.cancel()
    assert callbacks == [watch]  # on_ready runs on cancel, as in the binding
    assert db._watches == {}  # cancelling forgets the registration, so none pile up
    put(db, w=b"changed")
    assert watch.wait(0) is False and not watch.fired


def test_watch_of_a_failed_transaction_raises_its_error(db: SimDatabase) -> None:
    tr = db.create_transaction()
    increment(tr)
    watch = tr.watch(b"counter")
    transactional(db, increment)
    assert commit_code(tr) == 1020
    with pytest.raises(FDBError) as caught:
        watch.wait(5)
    assert caught.value.code == 1020


# -- limits and errors -----------------------------------------------------------------------


def error_code(action: Callable[[], object]) -> int:
    with pytest.raises(FDBError) as caught:
        action()
    return caught.value.code


def test_limits(db: SimDatabase) -> None:
    tr = db.create_transaction()
    assert error_code(lambda: tr.set(b"k" * 10_001, b"")) == 2102
    tr.set(b"k" * 10_000, b"")
    assert error_code(lambda: tr.set(b"k", b"v" * 100_001)) == 2103
    tr.set(b"k", b"v" * 100_000)
    assert error_code(lambda: tr.set(b"\xff/system", b"")) == 2004
    tr.commit().wait()


def test_transaction_too_large(db: SimDatabase) -> None:
    tr = db.create_transaction()
    for i in range(100):
        tr.set(b"big%03d" % i, b"v" * 99_990)
    tr.commit().wait()  # 9,999,600 bytes: fits
    tr = db.create_transaction()
    for i in range(101):
        tr.set(b"big%03d" % i, b"v" * 99_990)
    assert error_code(lambda: tr.commit().wait()) == 2101
    assert error_code(lambda: tr.on_error(2101).wait()) == 2101  # not retryable


def test_transaction_too_old() -> None:
    clock = FakeClock()
    db = SimDatabase(max_age=0.2, clock=clock)
    put(db, a=b"1")
    tr = db.create_transaction()
    tr.get(b"a")
    tr.set(b"b", b"1")
    clock.now += 0.25
    assert error_code(lambda: tr.get(b"a")) == 1007
    assert error_code(lambda: tr.commit().wait()) == 1007
    tr.on_error(1007).wait()  # retryable: a fresh read version
    tr.get(b"a")
    tr.commit().wait()


def test_old_history_is_pruned_but_live_snapshots_keep_theirs() -> None:
    clock = FakeClock()
    db = SimDatabase(max_age=0.2, clock=clock)
    old = db.create_transaction()
    old.get_read_version().wait()
    for i in range(10):
        put(db, k=b"%d" % i)
        if i == 7:
            recent = db.create_transaction()
            assert recent.get(b"k") == b"7"
        clock.now += 0.05
    put(db, k=b"last")  # recent is 0.15 s old, old 0.5 s
    assert len(db._history[b"k"]) < 11  # bounded
    assert recent.get(b"k") == b"7"  # its snapshot survived the pruning
    assert error_code(lambda: old.get(b"k")) == 1007
    assert db.create_transaction().get(b"k") == b"last"


def test_on_error_and_retryable_codes(db: SimDatabase) -> None:
    assert [is_retryable(FDBError(c)) for c in (1020, 1007, 1021, 2101, 2102, 2103)] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    assert str(FDBError(1020)).endswith("(1020)")
    tr = db.create_transaction()
    tr.set(b"a", b"1")
    tr.on_error(FDBError(1020)).wait()
    tr.commit().wait()
    assert not db.create_transaction().get(b"a").present()  # the reset dropped the write
    with pytest.raises(KeyError):
        tr.on_error(KeyError("not an FDB error"))


def test_a_committed_transaction_is_reused_only_after_reset(db: SimDatabase) -> None:
    tr = db.create_transaction()
    stamp = tr.get_versionstamp()
    tr.set(b"a", b"1")
    tr.commit().wait()
    assert stamp.wait() == struct.pack(">QH", tr.get_committed_version(), 0)
    assert error_code(lambda: tr.set(b"a", b"2")) == 2017  # or it would commit twice
    tr.reset()
    stamp = tr.get_versionstamp()
    assert tr.get(b"a") == b"1"
    tr.commit().wait()
    assert tr.get_committed_version() == -1  # read-only: no version, no versionstamp
    assert error_code(stamp.wait) == 2021


# -- several processes through SimServer -----------------------------------------------------


@pytest.fixture
def server_process() -> Iterator[tuple[str, int]]:
    """``python -m skunkqueue.testing.fdb_sim --port 0``, stopped by PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "skunkqueue.testing.fdb_sim", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the simulator printed no port within 15 s"
        line = proc.stdout.readline().decode()
        host, port = line.rsplit(None, 1)[-1].rsplit(":", 1)
        yield host, int(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # SIGTERM is a clean stop
    finally:
        stop_process(proc, signal.SIGKILL, 5)


def increment_many(port: int, times: int) -> None:
    """Run in a client process: ``times`` increments through the retry loop."""
    with connect(("127.0.0.1", port)) as db:
        for _ in range(times):
            transactional(db, increment)


def test_processes_share_one_simulator(server_process: tuple[str, int]) -> None:
    host, port = server_process
    code = f"from tests.test_fdb_sim import increment_many; increment_many({port}, 100)"
    clients = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT) for _ in range(4)]
    try:
        assert [c.wait(timeout=60) for c in clients] == [0, 0, 0, 0]
    finally:
        for c in clients:
            stop_process(c, signal.SIGKILL, 5)
    with connect((host, port)) as db:
        assert counter(db.create_transaction()) == 400


def test_remote_transactions_conflict_and_watch() -> None:
    with SimServer() as server, connect(server.address) as db:
        codes = race(increment, increment, db=db)
        assert sorted(codes) == [0, 1020]
        tr = db.create_transaction()
        tr.set(b"a", b"1")
        tr.clear_range(b"a", b"b")
        tr.set(b"ab", b"2")
        assert tr.get_range(b"", b"\xff", limit=2) == [(b"ab", b"2"), (b"counter", ONE)]
        watch, cancelled = tr.watch(b"ab"), tr.watch(b"counter")
        tr.commit().wait()
        cancelled.cancel()
        assert not watch.is_ready()
        transactional(db, lambda tr: tr.set(b"ab", b"3"))
        transactional(db, increment)
        assert watch.wait(10) is True
        assert cancelled.wait(0) is False
        wait_until(lambda: server.db._watches == {}, what="the server to drop both watches")
