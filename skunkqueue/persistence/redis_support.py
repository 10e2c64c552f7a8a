"""Helpers of the Redis backend: connecting from a URL, the compact record codec, the Lua
scripts, and the background connections that turn blocking pops and pub/sub messages
into precise wake-ups. Nothing here imports redis at module level, so the package (and
``skunkqueue.persistence.redis.default_cfg``) imports without the driver installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..config import redact
from ..errors import ConfigurationError
from ..model import JobRecord
from .base import bounded_wait

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

log = logging.getLogger("skunkqueue.redis")

#: Seconds a background BLPOP or pub/sub read blocks server-side before looping. Callers
#: never wait on it: they wait on a threading.Event with their own, precise timeout.
BLOCK_SECONDS = 1
#: Default socket timeouts (seconds); URL query options (?socket_timeout=...) override them.
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0

# -- the record codec ---------------------------------------------------------------
# Short field names keep a scheduled job's hash small (MEMORY USAGE is part of the
# benchmark); a field equal to its JobRecord default is not stored at all. The same
# table is spelled out in redis_scripts/_common.lua, which the scripts follow.

FIELDS: dict[str, tuple[str, str]] = {  # JobRecord field -> (hash field, kind)
    "event": ("e", "str"),
    "route": ("r", "str"),
    "payload": ("p", "str"),
    "serializer": ("z", "str"),
    "state": ("s", "str"),
    "eta": ("t", "float"),
    "created_at": ("c", "float"),
    "seq": ("q", "int"),
    "attempts": ("a", "int"),
    "deliveries": ("d", "int"),
    "max_deliveries": ("m", "int"),
    "owner": ("o", "str"),
    "lease_until": ("l", "float"),
    "started_at": ("b", "float"),
    "finished_at": ("f", "float"),
    "expires_at": ("x", "float"),
    "result_ttl": ("k", "float"),
    "timeout": ("tm", "float"),
    "retry": ("rt", "json"),
    "result": ("rs", "str"),
    "error": ("er", "json"),
    "schedule": ("sc", "str"),
    "parent": ("pa", "str"),
    "concurrency": ("cc", "int"),
    "history": ("hi", "history"),
}
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(JobRecord) if f.default is not dataclasses.MISSING
}
ALWAYS_STORED = ("event", "route", "payload", "state", "eta")  # the scripts read these
DECODE: dict[str, Callable[[str], Any]] = {
    "str": str,
    "float": float,
    "int": int,
    "json": json.loads,
    "history": json.loads,
}
BY_CODE = {code: (name, DECODE[kind]) for name, (code, kind) in FIELDS.items()}


def number(value: float) -> str:
    """A float as text that parses back to the same double (in Python, Lua and Redis)."""
    return repr(float(value))


def _encode_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"job field {name} must be a string, not {type(value).__name__}")
    return value


def _encode_float(name: str, value: Any) -> str:
    text = repr(float(value))
    if text == "nan":
        raise ValueError(f"job field {name} is NaN")
    return text


def _encode_int(name: str, value: Any) -> str:
    return str(operator.index(value))


_JSON = json.JSONEncoder(separators=(",", ":"))


def _encode_json(name: str, value: Any) -> str:
    return _JSON.encode(value)


def _encode_history(name: str, value: Any) -> str:
    """A JSON array with one entry per line: the scripts append an entry and drop the
    oldest by these line breaks, never decoding the entries (cjson would round their
    times to 14 digits). Compact JSON never holds a raw line break of its own."""
    return "[" + ",\n".join(_JSON.encode(entry) for entry in value) + "]"


_ENCODERS = {
    "str": _encode_str,
    "float": _encode_float,
    "int": _encode_int,
    "json": _encode_json,
    "history": _encode_history,
}
# Fields stored only when they differ from their JobRecord default: (field, hash field,
# encoder, default). encode_record writes the others itself.
_OPTIONAL = [
    (name, code, _ENCODERS[kind], DEFAULTS.get(name))
    for name, (code, kind) in FIELDS.items()
    if name not in ALWAYS_STORED + ("seq", "created_at")
]
# A new job usually has every optional field at its default: one C-level read and one
# tuple comparison tell, before any per-field work.
_optional_values = operator.attrgetter(*(name for name, _, _, _ in _OPTIONAL))
_OPTIONAL_DEFAULTS = tuple(default for _, _, _, default in _OPTIONAL)


def encode_record(job: JobRecord, state: str) -> list[str]:
    """The hash fields of ``job`` stored in ``state``, as flat field/value strings (no seq).

    They begin with state, eta and route, in that order (put.lua reads them by position).
    created_at is stored only where it differs from eta: a job fired for now has both
    equal, and each field left out saves Redis memory and script time on every put.
    """
    eta = _encode_float("eta", job.eta)
    out = [
        "s", state,
        "t", eta,
        "r", _encode_str("route", job.route),
        "e", _encode_str("event", job.event),
        "p", _encode_str("payload", job.payload),
    ]  # fmt: skip
    if job.created_at != job.eta:
        out += ("c", _encode_float("created_at", job.created_at))
    values = _optional_values(job)
    if values != _OPTIONAL_DEFAULTS:
        for (name, code, encode, default), value in zip(_OPTIONAL, values, strict=True):
            if value is not None and value != default:
                out += (code, encode(name, value))
    return out


def decode_record(job_id: str, fields: Sequence[str] | dict[str, str]) -> JobRecord:
    """A record from HGETALL output (a dict, or the flat list a script returns)."""
    if not isinstance(fields, dict):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    data: dict[str, Any] = {"id": job_id}
    for code, text in fields.items():
        name, decode = BY_CODE[code]
        data[name] = decode(text)
    data.setdefault("created_at", data.get("eta", 0.0))  # see encode_record
    return JobRecord(**data)


# -- scripts ------------------------------------------------------------------------

#: Scripts that run on a queue's job indexes get _common.lua prepended.
JOB_SCRIPTS = (
    "put",
    "fire_schedule",
    "claim",
    "renew",
    "finish",
    "cancel",
    "sweep",
    "release",
    "stats",
    "retry",
)
OTHER_SCRIPTS = (
    "acquire_lease",
    "release_lease",
    "forget_leases",
    "save_schedule",
    "schedules",
    "remove_schedule",
    "time",
)
#: Scripts that read a lease (a fence, who holds it, whether it ended) get _lease.lua
#: prepended, after _common.lua where they have both.
LEASE_SCRIPTS = (
    "sweep",
    "fire_schedule",
    "save_schedule",
    "acquire_lease",
    "release_lease",
    "forget_leases",
)
#: The first Redis version that reads a script's ``#!lua flags=`` line; before it the
#: line is a Lua syntax error.
FLAGS_SINCE = (7, 0)


def script_text(name: str, flags: bool = True) -> str:
    """A script as Redis loads it: its ``#!lua flags=`` line (Redis reads flags only on
    the first line of the text it loads), _checks.lua, its other shared snippets, then the
    rest of its own file. Without ``flags`` (a server older than Redis 7) that line is
    turned into a comment, so line numbers in error replies stay the same."""
    folder = resources.files(__package__).joinpath("redis_scripts")
    declaration, _, own = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8").partition("\n")
    if not declaration.startswith("#!lua flags="):
        raise ValueError(f"redis_scripts/{name}.lua must begin with its '#!lua flags=' line")
    parts = [
        "_checks",
        *(["_common"] if name in JOB_SCRIPTS else []),
        *(["_lease"] if name in LEASE_SCRIPTS else []),
    ]
    first = declaration if flags else f"-- {declaration} (not read before Redis 7)"
    snippets = (folder.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in parts)
    return "\n".join([first, *snippets, own])


def takes_script_flags(version: str) -> bool:
    """Whether a server reporting this ``redis_version`` (INFO server) reads ``#!lua``
    lines: Redis 7 and later, and Valkey (which reports 7.2.4)."""
    numbers = tuple(int(re.match(r"\d*", part).group() or 0) for part in version.split(".")[:2])
    return numbers >= FLAGS_SINCE


def server_version(client: Redis | RedisCluster, key: str) -> str:
    """``redis_version`` of the server that holds ``key`` (on a cluster, the node that
    serves its slot: where the scripts that name it run)."""
    if hasattr(client, "get_node_from_key"):
        client = client.get_node_from_key(key).redis_connection
    return str(client.info("server")["redis_version"])


# -- the direct lane ----------------------------------------------------------------


#: (redis-py Script, keys, args)
ScriptCall = tuple[Any, Sequence[str], Sequence[str]]


class ScriptLane:
    """Script calls on one connection kept out of the client's pool.

    A one-job put costs Redis about 25 us; redis-py's per-call bookkeeping (taking a
    connection from the pool and giving it back, its command packer, its observability
    hooks) costs as much again. This lane holds one connection, packs with hiredis when
    it is installed, and can pipeline several calls (a large ``put`` in chunks). Calls
    from several threads take turns; a forked child opens its own connection.

    A call that fails on the connection is sent once more on a new one, as redis-py's own
    default retry does: our scripts are safe to repeat (put by id, claim and finish by
    owner); only a second failure reaches the caller. With ``resend_after_timeout=False``
    (a backend with a ``call_timeout``) a call whose reply did not come in time is not
    sent again: it would wait on the store a second time. Anything else raised while replies
    are still unread (a KeyboardInterrupt from a signal handler between two sends or two
    reads, a later chunk that cannot be encoded) discards the connection: kept, it would
    hand the next call the replies meant for this one.
    """

    def __init__(self, client: Redis, *, resend_after_timeout: bool = True) -> None:
        import redis

        try:
            import hiredis

            self._pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
        except ImportError:  # redis-py's pure-Python packer, through a connection
            self._pack = self._pack_with_redis_py
        self._client = client
        self._resend_after_timeout = resend_after_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        self._lost = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._timed_out = redis.exceptions.TimeoutError
        self._error_reply = redis.exceptions.ResponseError
        self._no_script = redis.exceptions.NoScriptError

    def _pack_with_redis_py(self, command: tuple[Any, ...]) -> bytes:
        return b"".join(self._conn.pack_command(*command))

    def _connection(self) -> Any:
        if self._conn is None or self._pid != os.getpid():
            # After a fork the parent's socket is not ours to use or to close.
            self._conn = self._client.connection_pool.make_connection()
            self._pid = os.getpid()
        return self._conn

    def _discard(self, conn: Any) -> None:
        self._conn = None  # first: a second interrupt inside disconnect() must not keep it
        conn.disconnect()

    def run(self, calls: Iterable[ScriptCall]) -> list[Any]:
        """Run (script, keys, args) calls in order, pipelined; their replies, in order.

        ``calls`` may be a generator: each call is sent as soon as it is made, so Redis
        runs one while the caller builds the next. An error reply raises it (the calls
        before and after it were run)."""
        with self._lock:
            sent: list[ScriptCall] = []
            pending: Iterator[ScriptCall] = iter(calls)  # what was sent is not in it
            lost, reloaded = 0, False
            while True:
                conn = self._connection()
                try:
                    self._send(conn, pending, sent)
                    replies, error = self._replies(conn, len(sent))
                except self._lost as exc:
                    conn.disconnect()
                    lost += 1
                    waited = isinstance(exc, self._timed_out)
                    if lost > 1 or (waited and not self._resend_after_timeout):
                        raise
                except BaseException:
                    self._discard(conn)
                    raise
                else:
                    if error is None:
                        return replies
                    # Every reply was read: the connection is in step, whatever the error.
                    if reloaded or not isinstance(error, self._no_script):
                        raise error
                    reloaded = True  # a restarted server, or SCRIPT FLUSH
                    for script in {id(call[0]): call[0] for call in sent}.values():
                        script.sha = self._client.script_load(script.script)
                # Again from the first call: replies were not all read, or not all run.
                pending, sent = iter([*sent, *pending]), []

    def _send(self, conn: Any, calls: Iterable[ScriptCall], sent: list[ScriptCall]) -> None:
        for call in calls:
            script, keys, args = call
            sent.append(call)
            command = ("EVALSHA", script.sha, len(keys), *keys, *args)
            conn.send_packed_command([self._pack(command)], check_health=False)

    def _replies(self, conn: Any, count: int) -> tuple[list[Any], Exception | None]:
        """Every reply, and the first error reply among them (read on past it)."""
        replies, error = [], None
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except self._lost:
                raise
            except self._error_reply as exc:
                error = error or exc
        return replies, error

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.disconnect()
            self._conn = None


# -- connecting ---------------------------------------------------------------------


def connect(url: str, call_timeout: float | None = None) -> Redis | RedisCluster:
    """A client for ``url``: redis://, rediss://, unix://, or redis+cluster:// and
    rediss+cluster:// (a Redis Cluster reached through the listed host:port seeds).

    With ``call_timeout``, no socket wait (connecting, a reply) lasts longer than it, the
    URL's own timeouts included, and a command that timed out is not sent again (one
    that met a closed connection is, once, on a new one): a call on a store that stops
    answering fails within ``call_timeout`` on an open connection, or on one that cannot
    be made."""
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    scheme = urlsplit(url).scheme
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": bounded_wait(CONNECT_TIMEOUT, call_timeout),
        "socket_timeout": bounded_wait(SOCKET_TIMEOUT, call_timeout),
    }
    if call_timeout is not None:
        options["retry"] = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        url = _timeouts_at_most(url, call_timeout)  # redis-py lets the URL's win
    parts = urlsplit(url)
    if not scheme.endswith("+cluster"):
        db = parts.path.strip("/") if scheme != "unix" else "0"
        if db and not db.isdigit():  # redis-py would quietly use db 0
            raise ConfigurationError(f"Redis URL {redact(url)!r}: {db!r} is not a db number")
        return redis.Redis.from_url(url, **options)
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(f"Redis Cluster URL {redact(url)!r}: a cluster has only db 0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = [urlsplit(f"//{host}") for host in hosts.split(",") if host]
    if not seeds or not seeds[0].hostname:
        raise ConfigurationError(f"Redis Cluster URL {redact(url)!r} names no host:port")
    first = urlunsplit(
        parts._replace(
            scheme=scheme.removesuffix("+cluster"),
            netloc=(userinfo + "@" if userinfo else "") + seeds[0].netloc,
            path="",
        )
    )
    others = [ClusterNode(s.hostname, s.port or 6379) for s in seeds[1:] if s.hostname]
    return RedisCluster.from_url(first, startup_nodes=others or None, **options)


def _timeouts_at_most(url: str, bound: float) -> str:
    """``url`` with its ``socket_timeout`` and ``socket_connect_timeout`` options, where it
    sets them, lowered to ``bound``; an unreadable value is left for redis-py to refuse."""
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    lowered = []
    for name, value in options:
        if name in ("socket_timeout", "socket_connect_timeout"):
            try:
                value = repr(bounded_wait(float(value), bound))
            except ValueError:
                pass
        lowered.append((name, value))
    if lowered == options:
        return url
    return urlunsplit(parts._replace(query=urlencode(lowered)))


def blocking_client(url: str, client: Redis | RedisCluster, key: str) -> Redis:
    """A new one-connection client to the server holding ``key``, for blocking reads.

    Opened from the URL (for a cluster: the URL's credentials and options, the address
    of the node that serves ``key``), sharing nothing with the command client. It never
    retries on its own: close() interrupts a blocked read by shutting its socket, and the
    reader must see that as an error instead of reconnecting.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        host = f"[{node.host}]" if ":" in node.host else node.host
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{node.port}"
        scheme = parts.scheme.removesuffix("+cluster")
        url = urlunsplit((scheme, netloc, "", parts.query, ""))
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=BLOCK_SECONDS + SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


# -- wake-ups -----------------------------------------------------------------------


class _Listener:
    """A daemon thread with its own connection that sets ``woken`` when there may be work.

    Callers wait on the Event with their own timeout, so they wake on time to the
    millisecond even though Redis times out blocking commands only every ~100 ms.
    """

    def __init__(self, open_client: Callable[[], Redis], name: str) -> None:
        self._open_client = open_client
        self._client: Redis | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.woken = threading.Event()
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failures = 0
        while not self._closed:
            try:
                if self._client is None:
                    self._client = self._open_client()
                self._step(self._client)
                failures = 0
            except Exception as exc:
                if self._closed:
                    return
                failures += 1
                log.debug("wake-up listener %s: %r; reconnecting", self._thread.name, exc)
                self._drop()
                self.woken.set()  # the caller looks now and meets the error itself
                with self._cond:
                    self._cond.wait(min(1.0, 0.05 * 2**failures))

    def _step(self, client: Redis) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.connection_pool.disconnect(inuse_connections=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._drop()  # shuts the socket: a blocked read returns at once
        self._thread.join(timeout=2.0)


class RouteListener(_Listener):
    """BLPOP on the wake lists of some routes, but only while a ``wait`` is in progress.

    A token popped after the waiting worker gave up (it is busy running jobs now) is
    pushed back, so another idle worker wakes for it.
    """

    def __init__(self, open_client: Callable[[], Redis], keys: list[str]) -> None:
        self.keys = keys
        self._waiting = 0
        super().__init__(open_client, f"skunkqueue-wait-{','.join(keys)}")

    def wait(self, timeout: float) -> None:
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()
        try:
            self.woken.wait(timeout)
        finally:
            with self._cond:
                self._waiting -= 1
                if not self._waiting:
                    self.woken.clear()  # the claim that follows sees what woke us

    def _step(self, client: Redis) -> None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
        if self._closed:
            return
        popped = client.blpop(self.keys, timeout=BLOCK_SECONDS)
        if popped is None:
            return
        with self._cond:
            if self._waiting:
                self.woken.set()
                return
        pipe = client.pipeline(transaction=True)
        pipe.lpush(popped[0], "1").ltrim(popped[0], 0, 0)
        pipe.execute()


class SchedulerListener(_Listener):
    """Subscribed to the queue's scheduler channel from the first ``wait`` on."""

    def __init__(self, open_client: Callable[[], Redis], channel: str) -> None:
        self.channel = channel
        self.subscribed = threading.Event()
        self._pubsub: Any = None
        super().__init__(open_client, f"skunkqueue-wait-{channel}")

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.subscribed.wait(timeout):
            return  # not (re)connected in time
        self.woken.wait(max(0.0, deadline - time.monotonic()))
        self.woken.clear()  # the step that follows sees what woke us

    def _step(self, client: Redis) -> None:
        if self._pubsub is None:
            self._pubsub = client.pubsub()
            self._pubsub.subscribe(self.channel)
        message = self._pubsub.get_message(timeout=BLOCK_SECONDS)
        if message is None:
            return
        if message["type"] == "subscribe":
            self.subscribed.set()
        # On (re)subscribing too: changes made before it were not heard, so the caller
        # must look at the data once.
        self.woken.set()

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.reset()  # shuts its connection; a blocked read returns at once
            except Exception:  # noqa: S110 - a connection already broken needs no closing
                pass
        self.subscribed.clear()
        super()._drop()
