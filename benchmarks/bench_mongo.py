"""The MongoDB parts of benchmarks/bench.py: an own SecantusDB server, server details, and
the explain() check of the queries the backend sends per claim, finish, renew and promote.

SecantusDB is a MongoDB-compatible stand-in (GPL, test-only). It is only ever started as a
separate process (``secantusd-py``) and spoken to over the wire with pymongo; nothing here
imports it. It is far slower than mongod, so its figures say nothing about mongod's speed.

Imported by bench.py only; run ``python benchmarks/bench.py --mongo``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_redis import free_port

from skunkqueue import SkunkQueue
from skunkqueue.jobs import Outcome
from skunkqueue.persistence.base import SCHEDULER_LEASE, Fence
from skunkqueue.persistence.mongodb import COUNTERS, JOBS, LEASES, SCHEDULES

REPO = Path(__file__).resolve().parent.parent
STAND_IN = "SecantusDB stand-in: says nothing about mongod's speed"

#: Plan stages that walk an index, and the one that reads the whole collection.
INDEX_STAGES = {
    "IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_IDHACK", "EXPRESS_CLUSTERED_IXSCAN",
    "CLUSTERED_IXSCAN", "COUNT_SCAN", "DISTINCT_SCAN",
}  # fmt: skip
SCAN_STAGES = {"COLLSCAN"}
#: Commands whose plans are explained; the watcher's change stream and getMores are not.
EXPLAINED = ("find", "update", "delete", "findAndModify", "aggregate", "count", "distinct")
#: Backend verbs whose queries are checked, in report order; "claim" is the per-claim one.
VERBS = ("claim", "renew", "finish", "sweep")


def _binary() -> str:
    """``$SKUNKQUEUE_SECANTUSD``, else ``secantusd-py`` on PATH, else .tools/secantus's."""
    for candidate in (
        os.environ.get("SKUNKQUEUE_SECANTUSD"),
        shutil.which("secantusd-py"),
        str(REPO / ".tools" / "secantus" / "bin" / "secantusd-py"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(
        "--mongo: secantusd-py is not installed (python3 -m venv .tools/secantus && "
        ".tools/secantus/bin/pip install secantusdb)"
    )


class OwnSecantus:
    """A ``secantusd-py`` of the bench's own on a free loopback port, data in memory, its
    temp files and log under the work directory, stopped by PID (the way tests/servers.py
    MongoServer runs one). It is a single-node replica set, so change streams work."""

    def __init__(self, directory: Path) -> None:
        self.binary = _binary()
        self.dir = directory / "secantus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = self.dir / "secantusd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/skunkqueue_bench?directConnection=true"

    def start(self, timeout: float = 30.0) -> OwnSecantus:
        import pymongo
        import pymongo.errors

        config = self.dir / "secantusd.toml"  # empty: no search for other config files
        config.touch()
        argv = [
            self.binary, "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", ":memory:", "--log-level", "WARNING", "--config", str(config),
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(self.dir)}  # ':memory:' is a temp directory
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, env=env, start_new_session=True,
            )  # fmt: skip
        client: Any = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return self
                except pymongo.errors.PyMongoError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"secantusd-py on port {self.port} did not start:\n{tail}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM is a clean shutdown (it removes its temp data); SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def server_info(url: str) -> dict[str, Any]:
    """The server's version, whether it is SecantusDB (its buildInfo says so), and pymongo's."""
    import pymongo

    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        build = client.admin.command("buildInfo")
        hello = client.admin.command("hello")
    finally:
        client.close()
    return {
        "version": build.get("version"),
        "secantus_version": build.get("secantusVersion"),
        "replica_set": hello.get("setName"),
        "pymongo": pymongo.version,
    }


def stand_in_label(results: dict[str, Any]) -> str:
    """The label every speed figure carries when the server is SecantusDB, else ''."""
    server = results.get("mongo_server") or {}
    return STAND_IN if server.get("secantus_version") else ""


def drop_queues(url: str, prefix: str) -> None:
    """Delete every document of the bench queues whose names start with ``prefix``: their
    jobs, leases, schedules and counters."""
    import pymongo

    mine = {"$regex": "^" + re.escape(prefix)}
    client: Any = pymongo.MongoClient(url)
    try:
        db = client.get_default_database()
        for collection in (JOBS, LEASES, SCHEDULES):
            db[collection].delete_many({"q": mine})
        db[COUNTERS].delete_many({"_id": mine})
    finally:
        client.close()


# -- the explain() check ---------------------------------------------------------------


class _Recorder:
    """A pymongo command listener that keeps the commands one thread sends while armed."""

    def __init__(self) -> None:
        from pymongo import monitoring

        class Listener(monitoring.CommandListener):
            def started(inner, event: Any) -> None:  # noqa: N805 (the outer self is wanted)
                self.started(event)

            def succeeded(inner, event: Any) -> None:  # noqa: N805
                pass

            def failed(inner, event: Any) -> None:  # noqa: N805
                pass

        self.thread: int | None = None
        self.verb = ""
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        # Global: the backend makes its own MongoClient, so only clients made after this
        # see the listener. It records nothing unless armed, and only the arming thread.
        monitoring.register(Listener())

    def started(self, event: Any) -> None:
        if self.thread != threading.get_ident() or event.command_name not in EXPLAINED:
            return
        command = dict(event.command)
        if any("$changeStream" in stage for stage in command.get("pipeline", [])):
            return
        self.commands.append((self.verb, event.command_name, command))

    @contextmanager
    def capture(self, verb: str) -> Iterator[None]:
        self.verb, self.thread = verb, threading.get_ident()
        try:
            yield
        finally:
            self.thread = None


_recorder: _Recorder | None = None


def _shape(value: Any) -> Any:
    """A filter with its values blanked: operators and field names kept, ``$in`` lists
    shown as ``[...]``, so the same query with other ids is the same shape."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return [_shape(v) for v in value]
        return ["..."]
    return "?" if value is not None else None


def _statements(name: str, command: dict[str, Any]) -> list[tuple[dict[str, Any], Any, Any]]:
    """(explainable command, filter, sort) for each query of one recorded command."""
    collection = command[name]
    if name == "find":
        keep = ("filter", "sort", "projection", "limit", "skip", "hint", "singleBatch")
        inner = {"find": collection, **{k: command[k] for k in keep if k in command}}
        return [(inner, command.get("filter", {}), command.get("sort"))]
    if name in ("update", "delete"):
        field = "updates" if name == "update" else "deletes"
        return [
            ({name: collection, field: [statement]}, statement.get("q", {}), None)
            for statement in command[field]
        ]
    if name == "findAndModify":
        keep = ("query", "sort", "update", "remove", "new", "fields", "upsert")
        inner = {"findAndModify": collection, **{k: command[k] for k in keep if k in command}}
        return [(inner, command.get("query", {}), command.get("sort"))]
    if name == "aggregate":
        inner = {"aggregate": collection, "pipeline": command["pipeline"], "cursor": {}}
        head = (command["pipeline"] or [{}])[0]
        return [(inner, head.get("$match", {}), None)]
    keep = ("query", "key")
    inner = {name: collection, **{k: command[k] for k in keep if k in command}}
    return [(inner, command.get("query", {}), None)]


def _find_key(node: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a reply (depth first)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _stages(node: Any) -> list[dict[str, Any]]:
    """Every plan stage in a winning plan (classic trees, SBE's queryPlan, shard plans)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("stage"), str):
            found.append(node)
        for key, child in node.items():
            if key not in ("rejectedPlans", "slotBasedPlan", "filter", "parsedQuery"):
                found += _stages(child)
    elif isinstance(node, list):
        for child in node:
            found += _stages(child)
    return found


def plan_text(node: Any) -> str:
    """``PROJECTION_SIMPLE > SORT > FETCH > IXSCAN ready``: a winning plan on one line."""
    if not isinstance(node, dict):
        return "?"
    if "queryPlan" in node:  # SBE: the classic-shaped tree sits under queryPlan
        return plan_text(node["queryPlan"])
    if "shards" in node:
        return " | ".join(plan_text(s.get("winningPlan")) for s in node["shards"])
    text = str(node.get("stage", "?"))
    if "indexName" in node:
        text += f" {node['indexName']}"
    if "filter" in node and text.split()[0] in ("FETCH", "COLLSCAN"):
        text += "(filter)"
    children = [node["inputStage"]] if "inputStage" in node else node.get("inputStages", [])
    if len(children) == 1:
        return f"{text} > {plan_text(children[0])}"
    if children:
        return f"{text} > ({' | '.join(plan_text(c) for c in children)})"
    return text


def _hint(inner: dict[str, Any]) -> Any:
    """The index hint of one command (a write's sits in its statement)."""
    statements = inner.get("updates") or inner.get("deletes") or [inner]
    return statements[0].get("hint")


def _explain(db: Any, inner: dict[str, Any], query: Any) -> tuple[Any, str]:
    """The winning plan of one command, and how it was obtained. A server whose explain
    of a write ignores the write's filter (SecantusDB reports ``parsedQuery: {}`` and a
    COLLSCAN of everything) gets the equivalent find explained instead, and says so."""
    reply = db.command("explain", inner, verbosity="queryPlanner")
    name = next(iter(inner))
    how = f"explain of the {name}"
    parsed = _find_key(reply, "parsedQuery")
    if name in ("update", "delete", "findAndModify") and query and not parsed:
        hint = _hint(inner)  # the find carries the write's own hint
        find = {"find": inner[name], "filter": query, **({"hint": hint} if hint else {})}
        reply = db.command("explain", find, verbosity="queryPlanner")
        how = f"explain of the equivalent find: this server's explain of {name} ignores the filter"
    return _find_key(reply, "winningPlan"), how


def explain_check(url: str, queued: int = 300, scheduled: int = 100) -> dict[str, Any]:
    """Fill a fresh queue (``queued`` jobs queued, ``scheduled`` an hour ahead), then call
    the backend's claim, renew (a worker heartbeat), finish and promote in-process with
    pymongo's command monitoring on, and explain() every query they sent. promote runs
    with a ``now`` two days ahead, so its three hot finds all find work: due jobs, lapsed
    leases (the claimed jobs) and expired records (the finished ones)."""
    global _recorder
    import pymongo

    if _recorder is None:
        _recorder = _Recorder()
    recorder = _recorder
    recorder.commands = []
    name = f"bench-explain-{uuid.uuid4().hex[:6]}"
    queue = SkunkQueue(name, url=url)

    @queue.event(routes=["bench"], name="bench.noop")
    def noop() -> None:
        return None

    backend = queue.backend
    owner = f"bench-{uuid.uuid4().hex[:6]}"
    client: Any = pymongo.MongoClient(url)
    try:
        now = time.time()
        noop.fire_many([()] * queued)
        later = datetime.fromtimestamp(now + 3600, timezone.utc)
        for _ in range(scheduled):
            noop.fire_at(later)
        with recorder.capture("claim"):
            claimed = backend.claim(["bench"], owner, time.time(), 30.0, 10)
        if len(claimed) != 10:
            raise RuntimeError(f"explain: claimed {len(claimed)} of 10 jobs")
        with recorder.capture("renew"):
            backend.renew(owner, time.time(), 30.0, sorted(j.id for j in claimed))
        with recorder.capture("finish"):
            outcomes = [Outcome(j.id, "complete", result="null") for j in claimed[:5]]
            finished = backend.finish(outcomes, owner, time.time())
        if not all(finished):
            raise RuntimeError(f"explain: finish answered {finished}")
        fake_now = now + 2 * 86400
        lease = backend.acquire_lease(SCHEDULER_LEASE, owner, fake_now, 60.0)
        if lease is None:
            raise RuntimeError("explain: the scheduler lease is held")
        with recorder.capture("sweep"):
            promoted = backend.sweep(fake_now, Fence(SCHEDULER_LEASE, owner, lease.token))
        if not (promoted.promoted and promoted.recovered and promoted.expired):
            raise RuntimeError(f"explain: sweep did not take every branch: {promoted}")

        db = client.get_default_database()
        verbs: dict[str, dict[str, Any]] = {v: {"queries": 0, "shapes": []} for v in VERBS}
        for verb, command_name, command in recorder.commands:
            for inner, query, sort in _statements(command_name, command):
                group = verbs[verb]
                group["queries"] += 1
                shape = {
                    "command": command_name,
                    "collection": inner[command_name],
                    "filter": json.dumps(_shape(query)),
                    "sort": json.dumps(sort) if sort else None,
                    "hint": _hint(inner),
                }
                same = next((s for s in group["shapes"] if _same(s, shape)), None)
                if same is not None:
                    same["times"] += 1
                    continue
                plan, how = _explain(db, inner, query)
                stages = [s["stage"] for s in _stages(plan)]
                group["shapes"].append(
                    {
                        **shape,
                        "times": 1,
                        "plan": plan_text(plan),
                        "index_walks": sum(1 for s in stages if s in INDEX_STAGES),
                        "collection_scans": sum(1 for s in stages if s in SCAN_STAGES),
                        "blocking_sort": "SORT" in stages,
                        "how": how,
                        "winning_plan": json.loads(json.dumps(plan, default=str)),
                    }
                )
        for group in verbs.values():
            # Per call: a shape sent twice in one call (a second claim round) counts twice.
            group["index_walks"] = sum(s["index_walks"] * s["times"] for s in group["shapes"])
            group["collection_scans"] = sum(
                s["collection_scans"] * s["times"] for s in group["shapes"]
            )
        return {
            "queue_jobs": {"queued": queued, "scheduled": scheduled},
            "claim_limit": 10,
            "promote_report": {
                "promoted": promoted.promoted,
                "recovered": promoted.recovered,
                "expired": promoted.expired,
            },
            "verbs": verbs,
        }
    finally:
        client.close()
        queue.close()
        drop_queues(url, name)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("command", "collection", "filter", "sort", "hint"))


# -- report ----------------------------------------------------------------------------


def header(results: dict[str, Any]) -> list[str]:
    server = results.get("mongo_server")
    if not server:
        return []
    if server.get("secantus_version"):
        name = (
            f"SecantusDB {server['secantus_version']} (a MongoDB-compatible stand-in; it reports "
            f"itself as {server['version']}), replica set {server['replica_set']!r}"
        )
        line = f"mongodb: {name}, pymongo {server['pymongo']}"
        return [line, f"         every speed figure below: {STAND_IN}"]
    return [f"mongodb: server {server['version']}, pymongo {server['pymongo']}"]


def rows(explain: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Report rows of the explain() check: one per verb, the claim's with its verdict."""
    out = []
    for verb in VERBS:
        group = explain["verbs"][verb]
        walks, scans = group["index_walks"], group["collection_scans"]
        what = "per claim" if verb == "claim" else f"per {verb} call"
        out.append(
            (
                f"explain(): the {group['queries']} queries {what}",
                f"index walks {walks}, collection scans {scans}",
                "0 scans  " + ("ok" if scans == 0 else "MISSED"),
            )
        )
    return out


def details(explain: dict[str, Any]) -> list[str]:
    """One line per query shape: the filter, the winning plan, and MISSED on a scan."""
    lines = ["explain() of each query shape (values blanked; xN: sent N times in one call):"]
    as_find = sorting = False
    for verb in VERBS:
        for s in explain["verbs"][verb]["shapes"]:
            times = f" x{s['times']}" if s["times"] > 1 else ""
            extra = f" sort {s['sort']}" if s["sort"] else ""
            extra += f" hint {s['hint']}" if s["hint"] else ""
            plan = s["plan"]
            if not s["how"].startswith(f"explain of the {s['command']}"):
                plan += "  [as find *]"
                as_find = True
            if s["collection_scans"]:
                plan += "  MISSED: collection scan"
            sorting = sorting or s["blocking_sort"]
            lines.append(
                f"  {verb:<7} {s['command']} {s['collection']}{times} {s['filter']}{extra}"
            )
            lines.append(f"          -> {plan}")
    if as_find:
        lines.append(
            "  * this server's explain of an update or delete ignores the statement's filter "
            "(parsedQuery {}, a COLLSCAN of everything), so the equivalent find, with the "
            "write's hint, is explained instead"
        )
    if sorting:
        lines.append(
            "  SORT: a blocking sort above the index walk, of every key the walk returns "
            "(the limit is applied after it)"
        )
    return lines
