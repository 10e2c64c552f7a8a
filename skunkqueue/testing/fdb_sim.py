"""An in-memory stand-in for FoundationDB, for testing the FoundationDB backend without a cluster.

The backend's transactional functions are written against a small subset of the official
binding's ``Transaction`` (``get``, ``get_range``, ``snapshot``, ``set``, ``clear``,
``clear_range``, ``add``, ``set_versionstamped_key``, conflict ranges, ``watch``, ``commit``,
``on_error``). ``SimTransaction`` offers the same names and shapes over a ``SimDatabase`` that
behaves like FoundationDB where the backend's correctness depends on it:

* MVCC: a transaction reads one consistent snapshot, at a read version taken on first use.
* Optimistic concurrency: commit fails with ``FDBError(1020)`` when a read conflict range
  intersects a write of any transaction committed after the read version; snapshot reads add
  no read conflicts; read-only transactions always commit.
* Read-your-writes, atomic little-endian ``add``, versionstamps (8-byte commit version +
  2-byte batch order, API 520+ offset convention), watches, the 5 s transaction age limit and
  the key, value and transaction size limits.

Left out on purpose: key selectors, options, tenants, ``get_key``, most atomic ops other than
``add``, ``commit_unknown_result`` (never produced), spurious watch fires and batching of
commits (every commit gets its own version, batch order 0). Reads raise at call time rather
than at ``.wait()``. Read conflicts are added even for reads served from the transaction's
own writes, which is stricter than FoundationDB, never looser.

``SimServer`` and ``connect`` let several processes share one simulator. Messages are JSON
(bytes as base64) over ``multiprocessing.connection`` with an authkey, on 127.0.0.1 only;
nothing received is ever unpickled, so the well-known default key only keeps stray clients
out. Run one in the foreground with ``python -m skunkqueue.testing.fdb_sim --port N``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import random
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any, NamedTuple, Protocol, TypeVar

T = TypeVar("T")

MAX_KEY_SIZE = 10_000
MAX_VALUE_SIZE = 100_000
MAX_TRANSACTION_SIZE = 10_000_000
DEFAULT_AUTHKEY = b"skunkqueue-fdb-sim"

_DESCRIPTIONS = {
    1007: "Transaction is too old to perform reads or be committed",
    1009: "Request for future version",
    1020: "Transaction not committed due to conflict with another transaction",
    1021: "Transaction may or may not have committed",
    1025: "Operation aborted because the transaction was cancelled",
    1036: "Read or wrote an unreadable key",
    2000: "Invalid API call",
    2004: "Key outside legal range",
    2005: "Range begin key larger than end key",
    2017: "Operation issued while a commit was outstanding",
    2021: "Transaction is read-only and therefore does not have a commit version",
    2101: "Transaction exceeds byte limit",
    2102: "Key length exceeds limit",
    2103: "Value length exceeds limit",
}
# The codes FoundationDB's on_error retries (its "retryable" predicate, trimmed to those a
# client can meet); 1021 is among them although the commit may have happened.
_RETRYABLE = frozenset({1007, 1009, 1020, 1021, 1037, 1038, 1039, 1213})


class FDBError(Exception):
    """The binding's error: ``.code`` is FoundationDB's error number."""

    def __init__(self, code: int, description: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.description = description or _DESCRIPTIONS.get(code, "Unknown error")

    def __str__(self) -> str:
        return f"{self.description} ({self.code})"

    def __repr__(self) -> str:
        return f"FDBError({self.code})"


def is_retryable(err: BaseException | int) -> bool:
    """Whether ``on_error`` would retry ``err``; duck-typed, so real ``fdb.FDBError`` works too."""
    code = err if isinstance(err, int) else getattr(err, "code", None)
    return code in _RETRYABLE


class KeyValue(NamedTuple):
    key: bytes
    value: bytes


class RangeResult(list):  # type: ignore[type-arg]
    """A list of ``KeyValue``; ``to_list()`` as on the binding's ``FDBRange``."""

    def to_list(self) -> list[KeyValue]:
        return list(self)


class SimValue:
    """The binding's ``Value`` future, already resolved: compare it with bytes or call
    ``bytes()``; ``present()`` is False for a missing key, and like the binding a missing
    value has no length (so ``if value:`` fails loudly instead of meaning "present")."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def wait(self) -> SimValue:
        return self

    def present(self) -> bool:
        return self.value is not None

    def __bytes__(self) -> bytes:
        if self.value is None:
            raise TypeError("value is not present")
        return self.value

    def __len__(self) -> int:
        return len(bytes(self))

    def __getitem__(self, index: Any) -> Any:
        return bytes(self)[index]

    def __eq__(self, other: object) -> bool:
        return self.value == (other.value if isinstance(other, SimValue) else other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


class SimFuture:
    """The binding's ``Future`` subset: ``wait()`` returns the result or raises the error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []

    @classmethod
    def ready(cls, result: Any = None, error: BaseException | None = None) -> SimFuture:
        future = cls()
        future._resolve(result, error)
        return future

    def _resolve(self, result: Any = None, error: BaseException | None = None) -> bool:
        with self._lock:
            if self._event.is_set():
                return False
            self._result, self._error = result, error
            callbacks, self._callbacks = self._callbacks, []
            self._event.set()
        for callback in callbacks:
            callback(self)
        return True

    def is_ready(self) -> bool:
        return self._event.is_set()

    def block_until_ready(self) -> None:
        self._event.wait()

    def on_ready(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` once ready (now, if it already is), as the binding does."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def wait(self) -> Any:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._result


class SimWatch(SimFuture):
    """A watch: ready when it fires, is cancelled, or its transaction fails to commit.

    ``wait(timeout)`` is the simulator's convenience (True when fired, False on timeout or
    cancel); the binding's ``wait()`` takes no timeout and raises 1101 after ``cancel()``, so
    portable code waits through ``on_ready`` and an event of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._cancel_hook: Callable[[], None] | None = None

    @property
    def fired(self) -> bool:
        return self._event.is_set() and self._result is True

    def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        if not self._event.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return bool(self._result)

    def cancel(self) -> None:
        with self._lock:
            hook, self._cancel_hook = self._cancel_hook, None
        if self._resolve(False) and hook is not None:
            hook()

    def _fire(self) -> None:
        self._resolve(True)

    def _set_cancel_hook(self, hook: Callable[[], None]) -> bool:
        """Let the registry forget this watch on cancel; False if it is already done."""
        with self._lock:
            if self._event.is_set():
                return False
            self._cancel_hook = hook
            return True


Mutation = tuple[str, bytes, bytes]  # (kind, key, param); clear_range's param is its end key
Range = tuple[bytes, bytes]


class _Store(Protocol):
    """What a transaction needs from a database: ``SimDatabase`` in-process, ``RemoteDatabase``
    over the wire."""

    max_age: float
    clock: Callable[[], float]

    def _grv(self) -> int: ...
    def _read(self, key: bytes, rv: int) -> bytes | None: ...
    def _read_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, rv: int
    ) -> list[tuple[bytes, bytes]]: ...
    def _commit(
        self, rv: int, mutations: list[Mutation], reads: list[Range], writes: list[Range]
    ) -> int: ...
    def _watch(self, key: bytes, version: int, watch: SimWatch) -> None: ...


def _add_le(base: bytes | None, param: bytes) -> bytes:
    """FoundationDB's ADD: the old value is cut or zero-padded to len(param); wraps around."""
    width = len(param)
    old = int.from_bytes((base or b"")[:width], "little")
    return ((old + int.from_bytes(param, "little")) % (1 << (8 * width))).to_bytes(width, "little")


def _stamp_offset(data: bytes) -> tuple[bytes, int]:
    """Split an API-520+ versionstamp operand into its body and the placeholder's offset."""
    if len(data) < 4:
        raise FDBError(2000, "versionstamp operand lacks its 4-byte offset")
    body, offset = data[:-4], struct.unpack("<I", data[-4:])[0]
    if offset + 10 > len(body):
        raise FDBError(2000, "versionstamp offset out of range")
    return body, offset


def _place_stamp(data: bytes, stamp: bytes) -> bytes:
    body, offset = _stamp_offset(data)
    return body[:offset] + stamp + body[offset + 10 :]


def _overlaps(a: Iterable[Range], b: Iterable[Range]) -> bool:
    b = list(b)
    return any(rb < we and wb < re for rb, re in a for wb, we in b)


def _uncovered(begin: bytes, end: bytes, ranges: list[Range]) -> list[Range]:
    """The parts of [begin, end) that no range in ``ranges`` covers, in key order."""
    out, cur = [], begin
    for b, e in sorted(ranges):
        if b >= end:
            break
        if e > cur:
            if b > cur:
                out.append((cur, b))
            cur = e
    if cur < end:
        out.append((cur, end))
    return out


class SimDatabase:
    """A thread-safe, multi-version key-value store that commits like FoundationDB.

    ``max_age`` is the transaction age limit (FoundationDB's 5 s) and also how long version
    history is kept; ``clock`` is injectable so tests can age transactions without sleeping.
    """

    def __init__(self, max_age: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._version = 0
        # Reads below the floor may have lost history, so they get 1007 (too old).
        self._floor = 0
        self._keys: list[bytes] = []  # sorted; every key with any retained version
        self._history: dict[bytes, list[tuple[int, bytes | None]]] = {}
        self._layered: set[bytes] = set()  # keys with old versions or a tombstone to prune
        self._recent: deque[tuple[int, float, list[Range]]] = deque()  # (version, time, writes)
        self._watches: dict[bytes, list[tuple[bytes | None, SimWatch]]] = {}
        self._last_prune = clock()

    def create_transaction(self) -> SimTransaction:
        return SimTransaction(self)

    # -- the _Store protocol, also served to remote clients by SimServer ------------------

    def _grv(self) -> int:
        with self._lock:
            return self._version

    def _read(self, key: bytes, rv: int) -> bytes | None:
        with self._lock:
            self._check_rv(rv)
            return self._value_at(key, rv)

    def _read_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, rv: int
    ) -> list[tuple[bytes, bytes]]:
        with self._lock:
            self._check_rv(rv)
            lo, hi = bisect.bisect_left(self._keys, begin), bisect.bisect_left(self._keys, end)
            keys = self._keys[lo:hi]
            rows = []
            for key in reversed(keys) if reverse else keys:
                value = self._value_at(key, rv)
                if value is not None:
                    rows.append((key, value))
                    if len(rows) == limit:
                        break
            return rows

    def _commit(
        self, rv: int, mutations: list[Mutation], reads: list[Range], writes: list[Range]
    ) -> int:
        with self._lock:
            self._check_rv(rv)
            if reads:
                for version, _, written in reversed(self._recent):
                    if version <= rv:
                        break
                    if _overlaps(reads, written):
                        raise FDBError(1020)
            version = self._version + 1
            stamp = struct.pack(">QH", version, 0)
            touched: set[bytes] = set()
            for kind, key, param in mutations:
                self._apply(kind, key, param, version, stamp, touched)
            self._version = version
            now = self.clock()
            self._recent.append((version, now, writes))
            fired = self._due_watches(touched)
            self._prune(now)
        for watch in fired:  # outside the lock: a callback may start a transaction
            watch._fire()
        return version

    def _watch(self, key: bytes, version: int, watch: SimWatch) -> None:
        """Fire ``watch`` once ``key``'s value differs from its value at ``version``."""
        with self._lock:
            current = self._value_at(key, self._version)
            # Below the floor the old value is unknown: fire, as FoundationDB may spuriously.
            if version < self._floor or self._value_at(key, version) != current:
                fire = True
            else:
                fire = False
                self._watches.setdefault(key, []).append((current, watch))
        if fire:
            watch._fire()
        elif not watch._set_cancel_hook(lambda: self._unwatch(key, watch)):
            self._unwatch(key, watch)

    # -- internals; the caller holds the lock -----------------------------------------------

    def _unwatch(self, key: bytes, watch: SimWatch) -> None:
        with self._lock:
            left = [(v, w) for v, w in self._watches.get(key, []) if w is not watch]
            if left:
                self._watches[key] = left
            else:
                self._watches.pop(key, None)

    def _check_rv(self, rv: int) -> None:
        if rv < self._floor:
            raise FDBError(1007)

    def _value_at(self, key: bytes, version: int) -> bytes | None:
        for v, value in reversed(self._history.get(key, ())):
            if v <= version:
                return value
        return None

    def _put(self, key: bytes, version: int, value: bytes | None, touched: set[bytes]) -> None:
        history = self._history.get(key)
        if history is None:
            if value is None:
                return
            history = self._history[key] = []
            bisect.insort(self._keys, key)
        if history and history[-1][0] == version:
            history[-1] = (version, value)  # a second mutation of the key in one commit
        else:
            history.append((version, value))
        if len(history) > 1 or value is None:
            self._layered.add(key)
        touched.add(key)

    def _apply(
        self, kind: str, key: bytes, param: bytes, version: int, stamp: bytes, touched: set[bytes]
    ) -> None:
        if kind == "set":
            self._put(key, version, param, touched)
        elif kind == "clear":
            if self._value_at(key, version) is not None:
                self._put(key, version, None, touched)
        elif kind == "clear_range":
            lo, hi = bisect.bisect_left(self._keys, key), bisect.bisect_left(self._keys, param)
            for k in self._keys[lo:hi]:
                if self._value_at(k, version) is not None:
                    self._put(k, version, None, touched)
        elif kind == "add":
            self._put(key, version, _add_le(self._value_at(key, version), param), touched)
        elif kind == "vs_key":
            self._put(_place_stamp(key, stamp), version, param, touched)
        elif kind == "vs_value":
            self._put(key, version, _place_stamp(param, stamp), touched)
        else:
            raise ValueError(f"unknown mutation {kind!r}")

    def _due_watches(self, touched: set[bytes]) -> list[SimWatch]:
        fired = []
        for key in touched & self._watches.keys():
            current = self._value_at(key, self._version)
            waiting = self._watches.pop(key)
            fired += [w for seen, w in waiting if seen != current]
            left = [(seen, w) for seen, w in waiting if seen == current]
            if left:
                self._watches[key] = left
        return fired

    def _prune(self, now: float) -> None:
        """Forget history no valid transaction can read: older than ``max_age``."""
        while self._recent and self._recent[0][1] < now - self.max_age:
            self._floor = self._recent.popleft()[0]
        if now - self._last_prune < self.max_age / 8:
            return  # compacting is a scan over the layered keys; do it now and then
        self._last_prune = now
        for key in list(self._layered):
            history = self._history[key]
            keep = 0
            while keep + 1 < len(history) and history[keep + 1][0] <= self._floor:
                keep += 1
            del history[:keep]
            if history[0][1] is None and history[0][0] <= self._floor:
                del history[0]
            if not history:
                del self._history[key]
                del self._keys[bisect.bisect_left(self._keys, key)]
            if len(history) <= 1 and (not history or history[0][1] is not None):
                self._layered.discard(key)


class _Pending:
    """Atomic adds over a value this transaction has not read (applied when it is read)."""

    def __init__(self, param: bytes) -> None:
        self.params = [param]

    def apply(self, base: bytes | None) -> bytes:
        for param in self.params:
            base = _add_le(base, param)
        return base  # type: ignore[return-value]


_MAX_BACKOFF = 0.05


class SimTransaction:
    """One transaction; the binding's method names and shapes (see the module docstring).

    Use one transaction per thread. Reads raise ``FDBError`` when called; ``commit()`` and
    ``on_error()`` return futures whose ``wait()`` raises, as the binding's do.
    """

    def __init__(self, db: _Store) -> None:
        self._db = db
        self.snapshot = _Snapshot(self)
        self._backoff = 0.001
        self._watch_list: list[tuple[bytes, SimWatch]] = []
        self._stamps: list[SimFuture] = []
        self._reset()

    def _reset(self) -> None:
        for _, watch in self._watch_list:
            watch.cancel()
        for future in self._stamps:
            future._resolve(error=FDBError(1025))
        self._state = "open"  # open | committed | cancelled
        self._rv: int | None = None
        self._rv_time = 0.0
        self._mutations: list[Mutation] = []
        self._size = 0
        self._reads: list[Range] = []
        self._writes: list[Range] = []
        self._overlay: dict[bytes, bytes | None | _Pending] = {}  # point writes, for RYW
        self._cleared: list[Range] = []  # ranges cleared; later point writes override
        self._unreadable: list[Range] = []  # where versionstamped writes may land
        self._watch_list = []
        self._stamps = []
        self._committed_version = -1

    # -- checks ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state == "cancelled":
            raise FDBError(1025)
        if self._state == "committed":  # as in FoundationDB, until reset()
            raise FDBError(2017)

    def _key(self, key: object, write: bool = False) -> bytes:
        self._check_open()
        if isinstance(key, SimValue):
            key = key.value
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if key >= b"\xff":
            raise FDBError(2004)
        if write and len(key) > MAX_KEY_SIZE:
            raise FDBError(2102)
        return key

    @staticmethod
    def _value(value: object) -> bytes:
        if isinstance(value, SimValue):
            value = value.value
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        if len(value) > MAX_VALUE_SIZE:
            raise FDBError(2103)
        return value

    def _range(self, begin: object, end: object) -> Range:
        begin = self._key(b"" if begin is None else begin)
        end = b"\xff" if end is None else end
        if not isinstance(end, bytes):
            raise TypeError(f"key must be bytes, not {type(end).__name__}")
        if end > b"\xff":
            raise FDBError(2004)
        return begin, end

    def _read_version(self) -> int:
        """The read version, taken on first use; 1007 once it is older than ``max_age``."""
        self._check_open()
        if self._rv is None:
            self._rv, self._rv_time = self._db._grv(), self._db.clock()
        elif self._db.clock() - self._rv_time > self._db.max_age:
            raise FDBError(1007)
        return self._rv

    def _in_cleared(self, key: bytes) -> bool:
        return any(b <= key < e for b, e in self._cleared)

    # -- reads ---------------------------------------------------------------------------

    def get_read_version(self) -> SimFuture:
        return SimFuture.ready(self._read_version())

    def get(self, key: bytes) -> SimValue:
        return self._get(key, snapshot=False)

    def get_range(
        self,
        begin: bytes | None,
        end: bytes | None,
        limit: int = 0,
        reverse: bool = False,
        streaming_mode: object = None,
    ) -> RangeResult:
        """[begin, end) as ``KeyValue``s; ``limit`` 0 means all. ``streaming_mode`` is ignored."""
        return self._get_range(begin, end, limit, reverse, snapshot=False)

    def _get(self, key: bytes, snapshot: bool) -> SimValue:
        key = self._key(key)
        rv = self._read_version()
        if any(b <= key < e for b, e in self._unreadable):
            raise FDBError(1036)
        if not snapshot:
            self._reads.append((key, key + b"\x00"))
        entry = self._overlay.get(key, _ABSENT)
        if entry is _ABSENT or isinstance(entry, _Pending):
            base = None if self._in_cleared(key) else self._db._read(key, rv)
            return SimValue(entry.apply(base) if isinstance(entry, _Pending) else base)
        return SimValue(entry)  # type: ignore[arg-type]

    def _get_range(
        self, begin: object, end: object, limit: int, reverse: bool, snapshot: bool
    ) -> RangeResult:
        begin, end = self._range(begin, end)
        rv = self._read_version()
        if begin >= end:
            return RangeResult()
        if _overlaps([(begin, end)], self._unreadable):
            raise FDBError(1036)
        # Our own point writes can hide at most len(points) stored keys, so reading that many
        # more than ``limit`` outside our cleared ranges is enough for the merged answer.
        points = [k for k in self._overlay if begin <= k < end]
        want = limit + len(points) if limit > 0 else 0
        merged: dict[bytes, bytes] = {}
        parts = _uncovered(begin, end, self._cleared)
        for b, e in reversed(parts) if reverse else parts:
            merged.update(
                self._db._read_range(b, e, want - len(merged) if want else 0, reverse, rv)
            )
            if want and len(merged) >= want:
                break
        for key in points:
            entry = self._overlay[key]
            if isinstance(entry, _Pending):
                merged[key] = entry.apply(merged.get(key))
            elif entry is None:
                merged.pop(key, None)
            else:
                merged[key] = entry
        keys = sorted(merged, reverse=reverse)
        if limit > 0:
            keys = keys[:limit]
        if not snapshot:
            # Like FoundationDB, a read that hit its limit conflicts only up to its last key.
            if limit > 0 and len(keys) == limit:
                last = keys[-1]
                self._reads.append((last, end) if reverse else (begin, last + b"\x00"))
            else:
                self._reads.append((begin, end))
        return RangeResult(KeyValue(k, merged[k]) for k in keys)

    # -- writes --------------------------------------------------------------------------

    def _mutate(self, kind: str, key: bytes, param: bytes, written: Range) -> None:
        self._mutations.append((kind, key, param))
        self._writes.append(written)
        self._size += len(key) + len(param)

    def set(self, key: bytes, value: bytes) -> None:
        key, value = self._key(key, write=True), self._value(value)
        self._overlay[key] = value
        self._mutate("set", key, value, (key, key + b"\x00"))

    def clear(self, key: bytes) -> None:
        key = self._key(key, write=True)
        self._overlay[key] = None
        self._mutate("clear", key, b"", (key, key + b"\x00"))

    def clear_range(self, begin: bytes | None, end: bytes | None) -> None:
        begin, end = self._range(begin, end)
        if begin > end:
            raise FDBError(2005)
        for key in [k for k in self._overlay if begin <= k < end]:
            del self._overlay[key]
        self._cleared.append((begin, end))
        self._mutate("clear_range", begin, end, (begin, end))

    def add(self, key: bytes, param: bytes) -> None:
        """Atomic little-endian add, applied at commit: a write conflict but no read conflict."""
        key, param = self._key(key, write=True), self._value(param)
        entry = self._overlay.get(key, _ABSENT)
        if isinstance(entry, _Pending):
            entry.params.append(param)
        elif entry is _ABSENT and not self._in_cleared(key):
            self._overlay[key] = _Pending(param)
        else:
            self._overlay[key] = _add_le(None if entry is _ABSENT else entry, param)  # type: ignore[arg-type]
        self._mutate("add", key, param, (key, key + b"\x00"))

    def set_versionstamped_key(self, key: bytes, value: bytes) -> None:
        """Set the key whose 10 bytes at offset ``key[-4:]`` (little-endian) become the
        commit's versionstamp. Like FoundationDB, the keys it may land on become unreadable
        in this transaction, and all of them are its write conflict range."""
        self._check_open()
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        body, offset = _stamp_offset(key)
        self._key(body, write=True)
        value = self._value(value)
        low = struct.pack(">QH", self._rv or 0, 0)
        written = (
            body[:offset] + low + body[offset + 10 :],
            body[:offset] + b"\xff" * 10 + body[offset + 10 :] + b"\x00",
        )
        self._unreadable.append(written)
        self._mutate("vs_key", key, value, written)

    def set_versionstamped_value(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` with the versionstamp placed at offset ``value[-4:]``."""
        key = self._key(key, write=True)
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        _stamp_offset(value)
        self._value(value[:-4])
        self._overlay.pop(key, None)
        self._unreadable.append((key, key + b"\x00"))
        self._mutate("vs_value", key, value, (key, key + b"\x00"))

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        begin, end = self._range(begin, end)
        if begin > end:
            raise FDBError(2005)
        self._reads.append((begin, end))

    def add_read_conflict_key(self, key: bytes) -> None:
        key = self._key(key)
        self._reads.append((key, key + b"\x00"))

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        begin, end = self._range(begin, end)
        if begin > end:
            raise FDBError(2005)
        self._writes.append((begin, end))

    def add_write_conflict_key(self, key: bytes) -> None:
        key = self._key(key)
        self._writes.append((key, key + b"\x00"))

    # -- watches, commit, retry ----------------------------------------------------------

    def watch(self, key: bytes) -> SimWatch:
        """A watch, registered when this transaction commits; it fires once the key's value
        differs from the one this transaction saw (or wrote)."""
        key = self._key(key)
        watch = SimWatch()
        self._watch_list.append((key, watch))
        return watch

    def _wrote(self, key: bytes) -> bool:
        return any(
            (b <= key < p) if kind == "clear_range" else (kind != "vs_key" and b == key)
            for kind, b, p in self._mutations
        )

    def commit(self) -> SimFuture:
        try:
            self._check_open()
            if self._size > MAX_TRANSACTION_SIZE:
                raise FDBError(2101)
            version = -1
            if self._writes:  # read-only transactions commit without a check
                version = self._db._commit(
                    self._read_version(), self._mutations, self._reads, self._writes
                )
        except FDBError as err:
            for future in [w for _, w in self._watch_list] + self._stamps:
                future._resolve(error=err)
            return SimFuture.ready(error=err)
        self._state, self._committed_version = "committed", version
        self._backoff = 0.001
        for key, watch in self._watch_list:
            if version >= 0 and self._wrote(key):
                seen = version
            else:
                seen = self._rv if self._rv is not None else self._db._grv()
            self._db._watch(key, seen, watch)
        self._watch_list = []
        for future in self._stamps:
            self._resolve_stamp(future)
        self._stamps = []
        return SimFuture.ready()

    def _resolve_stamp(self, future: SimFuture) -> None:
        if self._committed_version < 0:
            future._resolve(error=FDBError(2021))
        else:
            future._resolve(struct.pack(">QH", self._committed_version, 0))

    def get_committed_version(self) -> int:
        """The commit version, or -1 for a read-only (or uncommitted) transaction."""
        return self._committed_version

    def get_versionstamp(self) -> SimFuture:
        """A future for this transaction's 10-byte versionstamp, ready once it commits."""
        future = SimFuture()
        if self._state == "committed":
            self._resolve_stamp(future)
        else:
            self._stamps.append(future)
        return future

    def on_error(self, err: BaseException | int) -> SimFuture:
        """Retryable: back off briefly, reset, and return a ready future. Otherwise the
        future's ``wait()`` raises ``err``; a non-FDB exception is raised at once."""
        if isinstance(err, int):
            err = FDBError(err)
        if not isinstance(err, FDBError):
            raise err
        if not is_retryable(err):
            return SimFuture.ready(error=err)
        time.sleep(random.uniform(0, self._backoff))  # randomized, so rivals fall out of step
        backoff = min(self._backoff * 2, _MAX_BACKOFF)
        self._reset()
        self._backoff = backoff
        return SimFuture.ready()

    def reset(self) -> None:
        self._reset()
        self._backoff = 0.001

    def cancel(self) -> None:
        self._reset()
        self._state = "cancelled"


_ABSENT: Any = object()


class _Snapshot:
    """``tr.snapshot``: reads that add no read conflict ranges (but still see our writes)."""

    def __init__(self, tr: SimTransaction) -> None:
        self._tr = tr

    def get(self, key: bytes) -> SimValue:
        return self._tr._get(key, snapshot=True)

    def get_range(
        self,
        begin: bytes | None,
        end: bytes | None,
        limit: int = 0,
        reverse: bool = False,
        streaming_mode: object = None,
    ) -> RangeResult:
        return self._tr._get_range(begin, end, limit, reverse, snapshot=True)

    def get_read_version(self) -> SimFuture:
        return self._tr.get_read_version()


def transactional(db: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(tr, *args, **kwargs)`` and commit, retrying as FoundationDB prescribes.

    Works on a real ``fdb`` database too: every exception goes to ``tr.on_error``, which
    (there as here) returns for retryable errors and raises everything else. A retry after
    1021 (commit_unknown_result) may run ``fn`` again after a commit that did happen, so
    ``fn`` must be idempotent.
    """
    tr = db.create_transaction()
    while True:
        try:
            result = fn(tr, *args, **kwargs)
            tr.commit().wait()
            return result
        except Exception as err:
            tr.on_error(err).wait()


# -- sharing one simulator between processes -------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, separators=(",", ":")).encode())


def _recv(conn: Connection) -> dict[str, Any]:
    return json.loads(conn.recv_bytes())


def _shutdown(conn: Connection) -> None:
    """Wake a thread blocked reading ``conn`` (closing the fd alone would not)."""
    try:
        with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SimServer:
    """Serves a ``SimDatabase`` on 127.0.0.1, one thread per client connection."""

    def __init__(
        self, db: SimDatabase | None = None, port: int = 0, authkey: bytes = DEFAULT_AUTHKEY
    ) -> None:
        self.db = db if db is not None else SimDatabase()
        # The handshake runs in each connection's own thread (see _serve), so a slow client
        # never holds up the others; the backlog lets a whole worker pool connect at once.
        self._authkey = authkey
        self._listener = Listener(("127.0.0.1", port), backlog=128)
        self.address: tuple[str, int] = self._listener.address
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fdb-sim", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except Exception:  # a client that failed the handshake, or stop() waking us
                continue
            if self._stopping.is_set():
                conn.close()
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        try:  # accept() blocks; a connection that hangs up at once wakes it
            socket.create_connection(self.address, timeout=2).close()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                _shutdown(conn)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, conn: Connection) -> None:
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
        except (AuthenticationError, EOFError, OSError):
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
        try:
            while True:
                try:
                    request = _recv(conn)
                except (EOFError, OSError):
                    return
                if request["op"] == "watch":
                    self._serve_watch(conn, request)
                    return
                try:
                    reply = {"result": self._dispatch(request)}
                except FDBError as err:
                    reply = {"error": err.code}
                _send(conn, reply)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _dispatch(self, req: dict[str, Any]) -> Any:
        op, db = req["op"], self.db
        if op == "hello":
            return {"max_age": db.max_age}
        if op == "grv":
            return db._grv()
        if op == "get":
            value = db._read(_unb64(req["key"]), req["rv"])
            return None if value is None else _b64(value)
        if op == "range":
            rows = db._read_range(
                _unb64(req["begin"]), _unb64(req["end"]), req["limit"], req["reverse"], req["rv"]
            )
            return [[_b64(k), _b64(v)] for k, v in rows]
        if op == "commit":
            mutations = [(kind, _unb64(k), _unb64(p)) for kind, k, p in req["mutations"]]
            reads = [(_unb64(b), _unb64(e)) for b, e in req["reads"]]
            writes = [(_unb64(b), _unb64(e)) for b, e in req["writes"]]
            return db._commit(req["rv"], mutations, reads, writes)
        raise ValueError(f"unknown request {op!r}")

    def _serve_watch(self, conn: Connection, req: dict[str, Any]) -> None:
        """Block until the watch fires or the client sends anything (its cancel) or hangs up."""
        watch = SimWatch()
        self.db._watch(_unb64(req["key"]), req["version"], watch)
        # Polling the socket every 0.2 s only bounds how long a cancelled watch lingers here.
        while not watch.wait(0.2):
            if conn.poll(0):
                watch.cancel()
                break
        try:
            _send(conn, {"result": watch.fired})
        except OSError:
            pass


class RemoteDatabase:
    """A ``SimServer``'s database, seen from another process: ``create_transaction()`` gives a
    ``SimTransaction`` that buffers writes here and reads and commits over the wire."""

    def __init__(self, address: tuple[str, int], authkey: bytes = DEFAULT_AUTHKEY) -> None:
        self.address = address
        self._authkey = authkey
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self.clock: Callable[[], float] = time.monotonic
        self.max_age: float = self._call({"op": "hello"})["max_age"]

    def create_transaction(self) -> SimTransaction:
        return SimTransaction(self)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> RemoteDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, request: dict[str, Any]) -> Any:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = Client(self.address, authkey=self._authkey)
        try:
            _send(conn, request)
            reply = _recv(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._idle.append(conn)
        if "error" in reply:
            raise FDBError(reply["error"])
        return reply["result"]

    def _grv(self) -> int:
        return self._call({"op": "grv"})

    def _read(self, key: bytes, rv: int) -> bytes | None:
        value = self._call({"op": "get", "key": _b64(key), "rv": rv})
        return None if value is None else _unb64(value)

    def _read_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, rv: int
    ) -> list[tuple[bytes, bytes]]:
        request = {"op": "range", "begin": _b64(begin), "end": _b64(end), "limit": limit}
        rows = self._call({**request, "reverse": reverse, "rv": rv})
        return [(_unb64(k), _unb64(v)) for k, v in rows]

    def _commit(
        self, rv: int, mutations: list[Mutation], reads: list[Range], writes: list[Range]
    ) -> int:
        return self._call(
            {
                "op": "commit",
                "rv": rv,
                "mutations": [[kind, _b64(k), _b64(p)] for kind, k, p in mutations],
                "reads": [[_b64(b), _b64(e)] for b, e in reads],
                "writes": [[_b64(b), _b64(e)] for b, e in writes],
            }
        )

    def _watch(self, key: bytes, version: int, watch: SimWatch) -> None:
        # A watch blocks its own connection, so it gets one, and a thread to wait on it.
        args = (key, version, watch)
        threading.Thread(
            target=self._run_watch, args=args, name="fdb-sim-watch", daemon=True
        ).start()

    def _run_watch(self, key: bytes, version: int, watch: SimWatch) -> None:
        try:
            conn = Client(self.address, authkey=self._authkey)
        except OSError as err:
            watch._resolve(error=err)
            return
        with conn:
            send_lock = threading.Lock()

            def cancel() -> None:
                with send_lock:
                    try:
                        _send(conn, {"op": "cancel"})
                    except OSError:
                        pass  # the watch already ended and closed its connection

            with send_lock:
                _send(conn, {"op": "watch", "key": _b64(key), "version": version})
            if not watch._set_cancel_hook(cancel):
                cancel()
            try:
                fired = _recv(conn)["result"]
            except (EOFError, OSError) as err:
                watch._resolve(error=err)
                return
            if fired:
                watch._fire()


def connect(address: tuple[str, int], authkey: bytes = DEFAULT_AUTHKEY) -> RemoteDatabase:
    """The database a ``SimServer`` at ``address`` serves."""
    return RemoteDatabase(tuple(address), authkey)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skunkqueue.testing.fdb_sim",
        description="Serve an in-memory FoundationDB simulator on 127.0.0.1 until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--max-age", type=float, default=5.0, help="transaction age limit, s")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = SimServer(SimDatabase(max_age=args.max_age), port=args.port).start()
    host, port = server.address
    print(f"fdb_sim listening on {host}:{port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
