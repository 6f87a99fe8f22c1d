"""The package's import graph: no cycles, and argparse only in the command-line layer.

The graph holds every import of every module of ``netdsl`` and ``netdsl.backends`` (the
``backends/`` folder), function-level imports included, read with ``ast``. Imports under
``if TYPE_CHECKING:`` are left out: they are never executed (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND_LINE = ("netdsl.cli", "netdsl.commands", "netdsl.driver")
"""The command-line layer: the only modules that may import argparse."""


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in (("netdsl", REPO / "netdsl"), ("netdsl.backends", REPO / "backends")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST) -> list[str]:
    """Every module name an import statement of ``tree`` may load, skipping TYPE_CHECKING blocks."""
    names: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a submodule import also runs its package's __init__)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for imported in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if imported in MODULES and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports() -> None:
    assert "netdsl.passes.pipeline" in import_graph()["netdsl.api"]  # imported inside lower()


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_front_end_imports_one_way() -> None:
    graph = import_graph()
    assert "netdsl.elaborate" not in graph["netdsl.surface_ops"] | graph["netdsl.init_overrides"]
    assert "netdsl.surface_ops" in graph["netdsl.init_overrides"]
    assert "netdsl.init_overrides" in graph["netdsl.elaborate"]


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(import_graph()) == []


def test_argparse_only_in_the_command_line_layer() -> None:
    users = {name for name, path in MODULES.items()
             if "argparse" in _imported_names(ast.parse(path.read_text(encoding="utf-8")))}
    assert {u for u in users if not u.startswith(COMMAND_LINE)} == set()
