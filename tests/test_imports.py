"""Imports go one way, with the data flow: no cycle inside ``pipeline/``, hidden or not."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> nx.DiGraph:
    """Module -> module it imports, counting imports inside functions too."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in files else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in files and t != name)
    return graph


def stage_graph(modules: nx.DiGraph) -> nx.DiGraph:
    """The same edges between top-level parts (``pipeline.train``, ``pipeline.metrics`` …)."""
    def part(m: str) -> str:
        return ".".join(m.split(".")[:2])
    graph = nx.DiGraph()
    graph.add_edges_from((part(a), part(b)) for a, b in modules.edges if part(a) != part(b))
    return graph


def test_no_import_cycles():
    modules = import_graph()
    assert len(modules) > 40
    assert modules.has_edge("pipeline.train.validation", "pipeline.data.split")
    assert list(nx.simple_cycles(modules)) == []
    cycles = list(nx.simple_cycles(stage_graph(modules)))
    assert cycles == [], f"parts of pipeline/ that import each other: {cycles}"


def test_the_check_sees_a_hidden_cycle(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from pipeline.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pipeline.a import g\n")
    modules = import_graph(pkg)
    assert list(nx.simple_cycles(stage_graph(modules))) != []
