"""The package's shape: no import cycles, no oversized module, no upward import.

The import graph is read from the source with ``ast``, not from ``sys.modules``: every
import statement counts, at module level, inside a function or under ``if
TYPE_CHECKING:``, because each one is a dependency a reader has to follow. An import
of a package is an edge to its ``__init__``; ``from . import x`` and ``from .pkg import
x`` are edges to the submodule ``x`` when there is one, else to the package.

Each rule holds for the whole package, with no list of known offenders: a cycle, a
module over the size limit or an import against the layers fails its test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "aqueue"
MAX_LINES = 500

Graph = Mapping[str, frozenset[str]]

# -- the rules, as data ------------------------------------------------------------------

# Every module belongs to the group of its longest matching prefix; a group may import
# only the groups listed for it (and itself). From the bottom up:
GROUPS: dict[str, tuple[str, ...]] = {
    # errors and the version: imported by anything, import nothing of aqueue.
    "base": ("aqueue.errors", "aqueue._version"),
    # the task model and routing: pure, no I/O.
    "model": (
        "aqueue._task",
        "aqueue._limits",
        "aqueue._job",
        "aqueue._flow",
        "aqueue._codec",
        "aqueue._cron",
        "aqueue._options",
        "aqueue._mux",
        "aqueue._format",
    ),
    # the protocol layer: connections, scripts, keys. Knows nothing of tasks.
    "redis": ("aqueue._redis",),
    # a throwaway server process, for demos, `aqueue dev` and tests.
    "embedded": ("aqueue._server", "aqueue.server"),
    # what the producer, the admin side and the worker share: task preparation
    # (_producer), reads of tasks, workers and cron entries (_reads), cancelling a task,
    # the per-minute samples the dashboard and the metrics collector keep (_minutes).
    "shared": (
        "aqueue._producer",
        "aqueue._reads",
        "aqueue._cancel",
        "aqueue._flows",
        "aqueue._flowreads",
        "aqueue._minutes",
    ),
    # the producer and admin side.
    "api": ("aqueue._client", "aqueue._inspector", "aqueue._sync"),
    # the consumer side.
    "worker": ("aqueue._worker",),
    # the public API (the package's __init__ only): nothing inside aqueue imports it.
    "public": ("aqueue",),
    # the tools built on the public API's parts.
    "tools": ("aqueue._cli", "aqueue.web", "aqueue.metrics", "aqueue.testing", "aqueue.tracing"),
}
# The producer and admin side and the worker are siblings: neither imports the other.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "model": frozenset({"base"}),
    "redis": frozenset({"base"}),
    "embedded": frozenset({"base"}),
    "shared": frozenset({"base", "model", "redis"}),
    "api": frozenset({"base", "model", "redis", "shared"}),
    "worker": frozenset({"base", "model", "redis", "shared"}),
    "public": frozenset({"base", "model", "redis", "shared", "api", "worker"}),
    "tools": frozenset({"base", "model", "redis", "embedded", "shared", "api", "worker"}),
}


# -- reading the source ------------------------------------------------------------------


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file; a package is named by its ``__init__``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: Iterable[str]) -> frozenset[str]:
    """The aqueue modules that the module ``name`` (at ``path``) imports anywhere."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_deepest(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else _deepest(target, known))
    found.discard("")
    found.discard(name)
    return frozenset(found)


def _deepest(dotted: str, known: set[str]) -> str:
    """The deepest aqueue module along ``dotted`` ('' if it is not aqueue's)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return ""


def import_graph(root: Path = ROOT) -> dict[str, frozenset[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, files) for name, path in files.items()}


# -- the checks ----------------------------------------------------------------------------


def cycles(graph: Graph) -> list[list[str]]:
    """The import cycles of ``graph``, each as a path that ends where it starts: per
    strongly connected component (Tarjan), the shortest cycle through each of its
    edges, without repeats."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found: set[tuple[str, ...]] = set()
    for component in components:
        for v in component:
            for w in graph[v] & component:
                path = [v, *_shortest_path(graph, w, v, component)[:-1]]
                start = path.index(min(path))  # one rotation per cycle
                found.add(tuple(path[start:] + path[:start]))
    return sorted([*cycle, cycle[0]] for cycle in found)


def _shortest_path(graph: Graph, src: str, dst: str, within: frozenset[str]) -> list[str]:
    """The modules from ``src`` to ``dst`` (both included), breadth first."""
    paths = {src: [src]}
    queue = [src]
    while queue:
        v = queue.pop(0)
        if v == dst:
            return paths[v]
        for w in sorted(graph[v] & within):
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no path from {src} to {dst}")  # pragma: no cover


def group_of(module: str) -> str:
    """The group of ``module``'s longest matching prefix. The package itself (``aqueue``:
    the public API) matches only itself, so that a new module has to be given a group."""
    best, group = -1, ""
    for name, prefixes in GROUPS.items():
        for prefix in prefixes:
            inside = prefix != "aqueue" and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best:
                best, group = len(prefix), name
    return group


def upward_imports(graph: Graph) -> list[tuple[str, str]]:
    """(importer, imported) pairs that break ``MAY_IMPORT``."""
    bad = []
    for module, targets in sorted(graph.items()):
        mine = group_of(module)
        for target in sorted(targets):
            theirs = group_of(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                bad.append((module, target))
    return bad


def oversized(root: Path = ROOT) -> dict[str, int]:
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files(root).items()}
    return {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}


def _show(paths: Iterable[Iterable[str]]) -> str:
    return "\n".join("  " + " -> ".join(p) for p in paths)


# -- the tests -------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in module_files() if not group_of(m)] == []


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + _show(found)


def test_no_module_over_the_size_limit() -> None:
    assert oversized() == {}, f"modules over {MAX_LINES} lines"


# The claim/ack path: what runs for every task. A function there over this many lines
# usually hides a second concept (docs/architecture.md, "One task, from enqueue to ack").
HOT_PATH = ("claims", "processor", "runner", "outcomes", "slots", "held")
MAX_FUNCTION_LINES = 60


def long_functions(root: Path = ROOT) -> dict[str, int]:
    found: dict[str, int] = {}
    for name in HOT_PATH:
        path = root / "_worker" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"_worker/{name}.py:{node.lineno} {node.name}"] = length
    return found


def test_no_long_function_on_the_claim_and_ack_path() -> None:
    assert long_functions() == {}, f"functions over {MAX_FUNCTION_LINES} lines"


def test_no_upward_import() -> None:
    found = upward_imports(import_graph())
    assert not found, "imports against the layers:\n" + _show(found)


# -- the checker checks itself ---------------------------------------------------------------


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "aqueue"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from ._a import A\n",
        "_a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _b\n",
        "_b.py": "def f():\n    from .sub import leaf, thing\n",
        "_c.py": "import aqueue.sub.leaf\nfrom . import __version__\n",
        "sub/__init__.py": "thing = 1\n",
        "sub/leaf.py": "from .. import _a\nfrom ..sub import thing\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph == {
        "aqueue": {"aqueue._a"},
        "aqueue._a": {"aqueue._b"},
        "aqueue._b": {"aqueue.sub.leaf", "aqueue.sub"},
        "aqueue._c": {"aqueue.sub.leaf", "aqueue"},
        "aqueue.sub": set(),
        "aqueue.sub.leaf": {"aqueue._a", "aqueue.sub"},
    }
    assert cycles(graph) == [["aqueue._a", "aqueue._b", "aqueue.sub.leaf", "aqueue._a"]]


def test_a_module_outside_every_group_is_not_taken_for_the_public_api() -> None:
    assert group_of("aqueue") == "public"
    assert group_of("aqueue._worker.scheduler") == "worker"
    assert group_of("aqueue._new_module") == ""
