"""No import cycles among the project's packages (engine, telemetry, dashboards, alerts).

The graph is read from the sources (ast), with every import: module level and inside
functions alike, since a function-level import is how a cycle hides ("it imports this
module"). A cycle means two modules that cannot be understood, tested or moved apart."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "telemetry", "dashboards", "alerts")


def modules(root: pathlib.Path, packages: tuple[str, ...]) -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    found = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: anchored at this module's package
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    # `from a import b` imports the module a.b when there is one, else a name of a.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph(root: pathlib.Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (the nearest existing module of each name)."""
    known = modules(root, packages)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, package, known):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {sorted(graph[m] & members)}" for m in component)


def test_the_project_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert "engine.core.matcher" in graph and "dashboards.boards" in graph  # the graph is real
    assert "engine.core.book" in graph["engine.core.matcher"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: pathlib.Path) -> None:
    """The checker can fail: a cycle closed inside a function (relative import) is reported,
    a one-way import is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import helper\n")
    (pkg / "b.py").write_text("def helper():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_telemetry_imports_no_gateway_and_the_node_no_trace_shipper() -> None:
    """Issue 14's seams: telemetry is fed through its interface and imports no gateway
    module; the node names traces from the pure id module, not the shipper."""
    graph = import_graph(ROOT, PACKAGES)
    into_gateways = {
        module: sorted(dep for dep in deps if dep.startswith("engine.gateways"))
        for module, deps in graph.items()
        if module.startswith("telemetry")
    }
    assert "telemetry.metrics" in into_gateways  # the graph holds telemetry
    assert not {m: d for m, d in into_gateways.items() if d}, into_gateways
    assert "telemetry.trace_ids" in graph["engine.exchange"]
    assert "telemetry.tracing" not in graph["engine.exchange"]
