"""How the Redis scripts are declared and loaded: each one's ``#!lua flags=`` line, the
text Redis 7 loads (the line first) and the text an older server loads (the line turned
into a comment), the Lua table of record fields against the Python codec, and what the
flags change when Redis is out of memory. Runs against real redis-servers (Redis 7 here;
no Redis 6 is installed, so the older server's text is run on Redis 7 without its flags).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from importlib import resources

import pytest

from skunkqueue.errors import BackendUnavailable
from skunkqueue.jobs import JobState, Outcome
from skunkqueue.persistence import Backend, open_backend, redis_support, rules
from skunkqueue.persistence.redis_support import (
    ALWAYS_STORED,
    FIELDS,
    JOB_SCRIPTS,
    OTHER_SCRIPTS,
    script_text,
    takes_script_flags,
)

from .contract.support import T0, job, lead
from .drivers import require
from .servers import RedisServer

redis = require("redis")

SCRIPTS = JOB_SCRIPTS + OTHER_SCRIPTS
SNIPPETS = ("_checks", "_common", "_lease")
#: Every flag Redis 7 knows for scripts.
REDIS_FLAGS = {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
#: The scripts that write nothing.
READ_ONLY = {"stats", "schedules", "time"}
#: Scripts that move, renew or remove what Redis holds, adding little: they run while
#: Redis is out of memory, so a full Redis still drains (sweep expires records, workers
#: claim and renew, leaders keep the lead) while it refuses what adds records.
DRAINING = {
    "claim",
    "renew",
    "release",
    "cancel",
    "sweep",
    "acquire_lease",
    "release_lease",
    "forget_leases",
    "remove_schedule",
}


def source(name: str) -> str:
    folder = resources.files(redis_support.__package__).joinpath("redis_scripts")
    return folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def declared(name: str) -> set[str]:
    first = source(name).split("\n", 1)[0]
    assert first.startswith("#!lua flags="), f"{name}.lua begins {first!r}"
    return {flag for flag in first.removeprefix("#!lua flags=").split(",") if flag}


# -- the declarations ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_declares_its_flags_on_its_first_line(name):
    flags = declared(name)
    assert flags <= REDIS_FLAGS
    if name in READ_ONLY:
        assert flags == {"no-writes"}  # so it runs when Redis is out of memory, too
    elif name in DRAINING:
        assert flags == {"allow-oom"}
    else:
        # A script that adds records or results (put, fire_schedule, save_schedule, finish)
        # is refused whole while Redis is out of memory (no allow-oom), and all keep
        # Redis's checks that their keys share one slot (the queue's hash tag).
        assert flags == set()


@pytest.mark.parametrize("name", SNIPPETS)
def test_the_shared_snippets_declare_nothing(name):
    assert not any(line.startswith("#!") for line in source(name).split("\n"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_declaration_is_the_first_line_redis_loads(name):
    text = script_text(name)
    first, rest = text.split("\n", 1)
    assert first == source(name).split("\n", 1)[0]
    assert not any(line.startswith("#!") for line in rest.split("\n"))
    assert rest.endswith(source(name).split("\n", 1)[1])


def test_redis_7_takes_every_declaration(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    try:
        for name in SCRIPTS:
            client.script_load(script_text(name))
    finally:
        client.close()


# -- older servers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, takes",
    [
        ("6.2.14", False),
        ("6.0.0", False),
        ("5.0.7", False),
        ("7.0.0", True),
        ("7.0.15", True),
        ("7.2.4", True),  # what Valkey reports
        ("8.0.1", True),
        ("10.0.0", True),
        ("7.0.0-rc1", True),
    ],
)
def test_the_version_read_from_info_decides_the_declaration(version, takes):
    assert takes_script_flags(version) is takes


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_older_server_loads_the_script_without_its_declaration(name, redis_server):
    """Before Redis 7 a '#!' line is a Lua syntax error: the line becomes a comment, and
    every other line stays where it was (error replies name line numbers)."""
    plain, flagged = script_text(name, flags=False), script_text(name)
    assert not any(line.startswith("#!") for line in plain.split("\n"))
    assert plain.split("\n")[0] == f"-- {flagged.split(chr(10))[0]} (not read before Redis 7)"
    assert plain.split("\n")[1:] == flagged.split("\n")[1:]
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.script_load(plain)  # plain Lua, as Redis 6 takes it
    finally:
        client.close()


# -- the Lua record checks mirror the Python codec -------------------------------------------

LUA_KINDS = {
    "str": {"name", "text", "state"},
    "float": {"number"},
    "int": {"count"},
    "history": {"json"},
}


def lua_tables(client) -> tuple[dict[str, str], set[str], set[str]]:
    """KIND, REQUIRED and STATES as _common.lua defines them, read back from Redis."""
    body = (
        "local kinds, required, states = {}, {}, {}\n"
        "for f, kind in pairs(KIND) do kinds[#kinds + 1] = f; kinds[#kinds + 1] = kind end\n"
        "for f in pairs(REQUIRED) do required[#required + 1] = f end\n"
        "for s in pairs(STATES) do states[#states + 1] = s end\n"
        "return {kinds, required, states}"
    )
    text = "\n".join([source("_checks"), source("_common"), body])
    kinds, required, states = client.eval(text, 6, *(f"sq:{{mirror}}:{i}" for i in range(6)))
    return dict(zip(kinds[::2], kinds[1::2], strict=True)), set(required), set(states)


def test_the_lua_field_table_mirrors_the_python_codec(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        kinds, required, states = lua_tables(client)
    finally:
        client.close()
    python = {code: kind for code, kind in FIELDS.values()}
    assert set(kinds) == set(python)
    for code, kind in python.items():
        assert kinds[code] in LUA_KINDS.get(kind, {kind}), (code, kind, kinds[code])
    by_name = {name: code for name, (code, _) in FIELDS.items()}
    assert {n for n, c in by_name.items() if kinds[c] == "name"} == set(rules._TEXT) - {"id"}
    assert kinds[by_name["state"]] == "state"
    assert required == {by_name[n] for n in ALWAYS_STORED} | {by_name["seq"]}
    assert states == {state.value for state in JobState}


# -- out of memory -------------------------------------------------------------------------


@pytest.fixture
def full_server(tmp_path) -> Iterator[tuple[RedisServer, object]]:
    """A redis-server of this test's own (its memory limit is changed), and a client."""
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def opened(url: str, monkeypatch: pytest.MonkeyPatch, flags: bool) -> Backend:
    """A backend on a fresh queue; without ``flags`` it loads what an older server gets."""
    if not flags:
        monkeypatch.setattr("skunkqueue.persistence.redis.takes_script_flags", lambda v: False)
    return open_backend(url, f"oom-{uuid.uuid4().hex[:8]}")


def everything(client, queue: str) -> dict[str, object]:
    return {key: client.dump(key) for key in sorted(client.scan_iter(f"sq:{{{queue}}}:*"))}


def test_out_of_memory_refuses_a_writing_script_whole_and_stats_still_answer(
    full_server, monkeypatch
):
    """With its declaration Redis refuses a script that writes before it runs, whatever its
    first command: here finish, whose first write (a removal from the lease index) is one
    Redis allows out of memory, and which would then have written the result too."""
    server, client = full_server
    backend = opened(server.url, monkeypatch, flags=True)
    try:
        backend.put([job("a"), job("b")], T0)
        backend.claim(["default"], "w", T0, 30, limit=2)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        before = everything(client, backend.queue)

        with pytest.raises(BackendUnavailable, match="cannot take writes"):
            backend.finish([Outcome("a", "complete", result='"done"')], "w", T0 + 1)

        assert everything(client, backend.queue) == before
        assert backend.stats(T0 + 1).counts == {("running", "default"): 2}
        client.config_set("maxmemory", 0)
        assert backend.finish([Outcome("a", "complete", result='"done"')], "w", T0 + 1) == [True]
    finally:
        backend.close()


def test_out_of_memory_refuses_new_jobs_whole_while_the_queue_drains(full_server, monkeypatch):
    """A full Redis takes no new job, but what it holds keeps moving: the leader's sweep
    runs (and deletes expired records, which frees memory), workers claim and renew."""
    server, client = full_server
    backend = opened(server.url, monkeypatch, flags=True)
    try:
        backend.put([job("done"), job("waiting"), job("later", eta=T0 + 5)], T0)
        backend.claim(["default"], "w", T0, 30)
        backend.finish([Outcome("done", "complete", result='"x"')], "w", T0)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        before = everything(client, backend.queue)

        with pytest.raises(BackendUnavailable, match="cannot take writes"):
            backend.put([job("new")], T0 + 1)
        assert everything(client, backend.queue) == before

        now = T0 + 86400 + 10  # past the finished job's result_ttl and the later eta
        report = backend.sweep(now, lead(backend, now))
        assert (report.promoted, report.expired) == (1, 1)
        assert {j.id for j in backend.claim(["default"], "w", now, 30, limit=5)} == {
            "waiting",
            "later",
        }
        assert backend.renew("w", now, 30) == {"waiting", "later"}
    finally:
        client.config_set("maxmemory", 0)
        backend.close()


def test_without_its_declaration_a_script_runs_on_out_of_memory(full_server, monkeypatch):
    """What a server older than Redis 7 does (the README says so): it refuses a script only
    at a first write that adds memory, so a script that starts by removing runs whole."""
    server, client = full_server
    backend = opened(server.url, monkeypatch, flags=False)
    try:
        backend.put([job("a")], T0)
        backend.claim(["default"], "w", T0, 30)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)

        assert backend.finish([Outcome("a", "complete", result='"done"')], "w", T0 + 1) == [True]

        assert backend.get("a", T0 + 1).result == '"done"'
    finally:
        client.config_set("maxmemory", 0)
        backend.close()
