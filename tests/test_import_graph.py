"""The package's import graph has no cycle: the registry is a leaf, families never import the factory.

Every ``from . import x`` / ``from ..y import z`` / ``import fpn_zoo.x`` in every module counts, at module
level and inside functions alike (a call-time import is a cycle waiting for the right call order).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "fpn_zoo"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_graph() -> Dict[str, Set[str]]:
    """module -> the package modules it imports (a ``from pkg import name`` counts name if it is a module)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module or "") if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in files:  # fpn_zoo.x.y.attr -> fpn_zoo.x.y
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle as ``[a, b, ..., a]``, or ``[]`` (depth-first search, three colours)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 15 and "fpn_zoo._registry" in graph
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_registry_imports_no_family_and_families_not_the_factory():
    graph = import_graph()
    assert not {t for t in graph["fpn_zoo._registry"] if t.startswith("fpn_zoo.necks")}
    for module, targets in graph.items():
        if module.startswith("fpn_zoo.necks"):
            assert "fpn_zoo._factory" not in targets, module
            assert "fpn_zoo" not in targets, f"{module} imports the package root (which imports the families)"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
