"""The package's layering: no import cycles, every import points down, every module
imports on its own.

The import graph is read from the source (``ast``), counting every import of a
SkunkQueue module wherever it is written: at the top, inside a function, or under
``TYPE_CHECKING``. A cycle hidden behind a lazy import is still a cycle for the reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "skunkqueue"

#: Bottom to top; a module may import its own layer's modules and those below. A name
#: ending in "." covers a whole package.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "checks", "serialization", "config", "retry"),
    ("model",),
    ("persistence.", "testing."),
    ("registry", "broadcast", "cron", "schedule_state"),
    ("handles", "events", "jobs", "jobinfo"),
    ("schedule_ops",),
    ("queue",),
    ("scheduler.",),
    ("worker.",),
    ("cli_schedules",),
    ("cli", "cli_jobs", "__main__", ""),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The SkunkQueue modules that ``name`` imports, by name relative to the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [ours(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = ours(node.module or "")
            # "from . import x" names a submodule; "from .m import y" names m.
            targets = [
                f"{stem}.{a.name}".lstrip(".") if f"{stem}.{a.name}".lstrip(".") in known else stem
                for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def ours(dotted: str) -> str | None:
    """``skunkqueue.x.y`` as ``x.y``; ``None`` for any other package's module."""
    if dotted == "skunkqueue" or dotted.startswith("skunkqueue."):
        return dotted.removeprefix("skunkqueue").lstrip(".")
    return None


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def layer_of(name: str) -> int:
    best = None
    for index, members in enumerate(LAYERS):
        for member in members:
            if (
                name == member
                or (member.endswith(".") and name.startswith(member))
                or (member.endswith(".") and name == member[:-1])
            ):
                best = index
    assert best is not None, f"module {name!r} is in no layer: add it to LAYERS"
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_correctly() -> None:
    """The reader itself: it sees a relative import, a package import and a lazy one."""
    edges = graph()
    assert "model" in edges["persistence.base"]
    assert "persistence" in edges["worker.handback"]  # from ..persistence import ...
    assert "scheduler" in edges["cli"]  # imported inside a function
    assert "worker.pool" in edges["worker"]


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_down_or_across_its_layer() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_the_model_imports_nothing_of_ours() -> None:
    assert graph()["model"] == set()


def test_the_real_foundationdb_path_imports_no_test_double() -> None:
    assert not {t for t in graph()["persistence.fdb"] if t.startswith("testing")}


@pytest.mark.parametrize("name", sorted(n for n in modules() if n not in ("", "__main__")))
def test_each_module_imports_alone(name: str) -> None:
    """In a fresh interpreter, importing just this module works (its imports are
    complete and in an order that works, with no cycle that only the package's
    ``__init__`` happened to resolve)."""
    full = f"skunkqueue.{name}"
    code = f"import importlib; importlib.import_module({full!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "statement",
    [
        # the seed's README
        "from skunkqueue import SkunkQueue",
        "from skunkqueue.worker import WorkerPool",
        *(
            f"from skunkqueue.persistence.{backend} import default_cfg"
            for backend in ("memory", "sqlite", "redis", "mongodb", "fdb", "foundation")
        ),
        # paths released before the layering, kept
        "from skunkqueue import BroadcastHandle, Event, JobHandle, JobRecord, JobState, Retry",
        "from skunkqueue.jobs import BroadcastHandle, JobHandle, JobRecord, JobState, Outcome",
        "from skunkqueue.persistence import Backend, Fence, Lease, ScheduleRecord, open_backend",
        "from skunkqueue.persistence.base import SCHEDULER_LEASE, WORKER_LEASE_PREFIX, Backend",
        "from skunkqueue.queue import SkunkQueue, lookup_event",
        "from skunkqueue.scheduler import Scheduler",
        "from skunkqueue.worker import Worker",
    ],
)
def test_public_import_paths_still_work(statement: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
