"""The shape of the package: no import cycles, no private names imported across modules,
one job per module (under 500 lines), light core imports.

The import graph is read from the source with :mod:`ast`, not by importing: an edge
``a -> b`` is any ``import``/``from ... import`` of medssl module ``b`` in ``a``, at module
level *or inside a function*. A function-level import is still a dependency (it only
runs later), and a cycle closed by one is a cycle all the same; only imports under
``if TYPE_CHECKING:`` are left out, as they never run. ``from pkg import name`` is an edge
to ``pkg.name`` when that is a module, else to ``pkg``; importing ``a.b.c`` is an edge to
``a.b.c`` alone (its parent packages' ``__init__`` files are not counted, as in
import-linter). Plugins loaded by name (:data:`medssl.plugins.BUILTIN_PLUGINS`, entry
points) are no edge: the plugin machinery does not depend on what it loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medssl"

#: Modules allowed above MAX_LINES: generated-style kernel code kept in one file so that
#: Triton's JIT sees every kernel and its launch helper together.
LONG_MODULES = {"medssl/losses/triton_kernels.py"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported medssl module: first line}}`` over every file of medssl."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.startswith("medssl")]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                if base == "medssl" or base.startswith("medssl."):
                    targets = [
                        f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base)
                        for a in node.names
                    ]
            for target in targets:
                if target and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_among_medssl_modules() -> None:
    graph = import_graph()
    described = [
        "; ".join(
            f"{a}:{graph[a][b]} -> {b}" for a in component for b in graph[a] if b in component
        )
        for component in cycles(graph)
    ]
    assert not described, "import cycles:\n" + "\n".join(described)


def test_the_cycle_check_finds_a_cycle_closed_inside_a_function() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 9}, "d": {"a": 2}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from medssl import config\nif TYPE_CHECKING:\n    import x\n")
    assert [n.lineno for n in _imports(tree)] == [2]


def test_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    # centering dispatches to the Triton kernels inside its functions
    assert "medssl.losses.triton_kernels" in graph["medssl.losses.centering"]
    assert "medssl.losses.sinkhorn" in graph["medssl.losses.triton_kernels"]
    assert "medssl.config" in graph["medssl.eval.encoder"]


def private_imports() -> list[str]:
    """``file:line: module._name`` for every private name one medssl module imports from
    another (a shared helper belongs in a module where it is public)."""
    found = []
    for module, path in _modules().items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith("medssl") or node.module == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(
                        f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}"
                    )
    return found


def test_no_module_imports_private_names_of_another() -> None:
    assert not private_imports()


def test_no_module_above_the_line_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in _modules().values()
    }
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert not too_long, f"split these into modules of one job each: {too_long}"
    assert all(sizes[name] > MAX_LINES for name in LONG_MODULES), "LONG_MODULES is stale"


def test_every_module_names_its_job_in_its_first_docstring_line() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in _modules().values()
        if path.stat().st_size
        and not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()
    ]
    assert not missing, f"modules without a docstring: {missing}"


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("medssl.types", {"medssl", "medssl.types", "medssl.official_splits"}),
        ("medssl.plugins", {"medssl", "medssl.hookspecs", "medssl.plugins"}),
        ("medssl.losses", None),  # only medssl.losses.*
    ],
)
def test_core_modules_import_no_component_code(module: str, allowed: set[str] | None) -> None:
    code = f"import sys, {module}; print(*sorted(m for m in sys.modules if m.startswith('medssl')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    if allowed is None:
        extra = [m for m in out if m not in ("medssl", module) and not m.startswith(f"{module}.")]
        assert module in out
    else:
        extra = sorted(set(out) - allowed)
    assert not extra, f"import {module} also imports {extra}"
