"""The import graph of src/kalkan: the defence, the alerts and the config never import the edge,
and no two modules import each other, directly or round a longer loop.

Every import statement counts, wherever it stands: at module level, under TYPE_CHECKING and
inside a function (a "late" import). A late or TYPE_CHECKING-only cycle does not fail at run
time, but it is the same coupling: the modules cannot be read, tested or changed apart, and the
type checker walks it. The issue asks for none, so none is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Violations still in the tree, each with the change that removes it. The test fails when one
# of them is gone, so this list only shrinks: delete the entry with the fix.
KNOWN_EDGES: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the src modules it imports (`from a.b import c` is a.b.c when that is a
    module, else a.b)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target)
                if found is not None and found != name:
                    deps.add(found)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _forbidden(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    out = set()
    for src, deps in graph.items():
        if src.startswith(("kalkan.defense", "kalkan.alerts")) or src == "kalkan.config":
            out |= {(src, d) for d in deps if d == "kalkan.edge" or d.startswith("kalkan.edge.")}
    return out


def test_the_graph_sees_real_imports() -> None:
    graph = _graph()
    assert "kalkan.defense.verdict" in graph["kalkan.edge.pipeline"]
    assert "kalkan.defense.engine" in graph["kalkan.edge.pipeline"]  # a late import counts
    assert "kalkan.defense.challenge.keys" in graph["kalkan.defense.engine"]


def test_defense_alerts_and_config_import_nothing_from_the_edge() -> None:
    assert _forbidden(_graph()) == KNOWN_EDGES


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == KNOWN_CYCLES


def test_cycle_finder_finds_a_loop_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == {frozenset({"a", "b", "c"})}
    assert _forbidden({"kalkan.defense.x": {"kalkan.edge.y", "kalkan.config"},
                       "kalkan.edge.y": {"kalkan.defense.x"}}) == {
        ("kalkan.defense.x", "kalkan.edge.y")}


def test_the_pages_import_neither_the_edge_nor_the_defence() -> None:
    """Both send the pages readers see, so the pages may depend on neither."""
    graph = _graph()
    pages = {m: deps for m, deps in graph.items() if m.startswith("kalkan.pages")}
    assert "kalkan.pages.book" in pages
    for module, deps in pages.items():
        bad = {d for d in deps if d.startswith(("kalkan.edge", "kalkan.defense"))}
        assert not bad, (module, bad)
    assert "kalkan.pages" in graph["kalkan.defense.engine"] | graph["kalkan.edge.deliver"]
