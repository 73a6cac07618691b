"""The package's layout explains itself: no import cycles (lazy imports inside
functions count too), no module over 500 lines, and every module says in its
docstring where the book teaches it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "book_utils"
MAX_LINES = 500
#: Plumbing every chapter shares: their docstrings say what they do, not a chapter.
INFRASTRUCTURE = {
    "book_utils",
    "book_utils.assets",
    "book_utils.cache",
    "book_utils.checks",
    "book_utils.environment",
    "book_utils.plotting",
    "book_utils.sizes",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The book_utils modules that importing ``name`` runs, at import time or later in
    a function: each imported module, and the packages above it that ``name`` is not
    inside (importing ``a.b`` runs ``a/__init__.py`` first)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                )
                base = f"{base}.{node.module}" if node.module else base
            targets.add(base)
            targets |= {
                f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES
            }
    edges = set()
    for target in targets:
        if target not in MODULES or target == "book_utils":
            continue
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            above = ".".join(parts[:i])
            if above in MODULES and not (name + ".").startswith(above + "."):
                edges.add(above)
    edges.discard(name)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {name: imported_modules(name) for name in MODULES}
    assert graph["book_utils.transformer"] >= {"book_utils.attention"}  # sees imports
    assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_and_say_where_the_book_teaches_them(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_LINES, f"{name}: split it by concern"
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert docstring, f"{name} has no module docstring"
    if name not in INFRASTRUCTURE:
        assert "chapter" in docstring.lower(), f"{name}: say which chapter teaches it"
