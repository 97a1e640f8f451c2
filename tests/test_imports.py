"""No import cycles between edgeport's modules.

A cycle works only as long as every import in it stays inside a function, so it breaks the
day someone moves one to the top of a file; and it means two modules cannot be read,
tested or replaced apart. Every import counts, those inside functions included; only
imports under `if TYPE_CHECKING:` do not, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeport"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path, here: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that running `path` (module `here`) imports, parent
    packages included."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here if is_package else here.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names = [base]
            # `from package import module` imports that module too.
            names += [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and candidate != here:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: imports_of(path, name, set(paths)) for name, path in paths.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that is on a cycle, each cycle listed once."""
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(graph):
        # Breadth-first from start's imports back to start: the shortest cycle through it.
        previous: dict[str, str] = {}
        queue = [start]
        while queue and start not in previous:
            following = []
            for module in queue:
                for imported in sorted(graph.get(module, ())):
                    if imported not in previous:
                        previous[imported] = module
                        following.append(imported)
            queue = following
        if start not in previous:
            continue
        back: list[str] = []
        module = previous[start]
        while module != start:
            back.append(module)
            module = previous[module]
        cycle = [start, *reversed(back)]
        key = frozenset(cycle)
        if key not in seen:
            seen.add(key)
            cycles.append(cycle)
    return cycles


def _shown(cycle: list[str]) -> str:
    return " -> ".join([*cycle, cycle[0]])


def test_no_import_cycles_between_edgeport_modules() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(_shown(c) for c in cycles)


def test_the_cycle_finder_names_a_cycle_and_ignores_type_only_imports(tmp_path: Path) -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert [_shown(c) for c in find_cycles(graph)] == ["p.a -> p.b -> p.c -> p.a"]
    assert find_cycles({"p.a": {"p.b"}, "p.b": set()}) == []

    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from edgeport import pipeline\n"
        "def f():\n"
        "    from edgeport.backends import get_backend\n",
        encoding="utf-8",
    )
    known = {"edgeport", "edgeport.pipeline", "edgeport.backends"}
    assert imports_of(module, "edgeport.m", known) == {"edgeport", "edgeport.backends"}
