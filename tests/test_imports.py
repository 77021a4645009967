"""Imports go one way, with the data flow; a stage's code is part of its fingerprint."""
from __future__ import annotations

import shutil
import zipfile

import networkx as nx

from pipeline.io.code import PACKAGE, code_version, imported_modules, module_files
from pipeline.io.stage import GRAPH, code_hashes


def import_graph(root=PACKAGE) -> nx.DiGraph:
    """Module -> module it imports, counting imports inside functions too."""
    files = module_files(root)
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        graph.add_edges_from((name, t) for t in imported_modules(path.read_text(), files)
                             if t != name)
    return graph


def part_graph(modules: nx.DiGraph) -> nx.DiGraph:
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
    cycles = list(nx.simple_cycles(part_graph(modules)))
    assert cycles == [], f"parts of pipeline/ that import each other: {cycles}"


def test_the_check_sees_a_hidden_cycle(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from pipeline.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pipeline.a import g\n")
    assert list(nx.simple_cycles(part_graph(import_graph(pkg)))) != []


def _versions(root) -> dict[str, dict]:
    return {name: code_hashes(name, str(root)) for name in GRAPH}


def test_editing_a_module_changes_the_code_of_the_stages_that_run_it(tmp_path):
    root = tmp_path / "pipeline"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert _versions(root) == _versions(PACKAGE)            # content, not location
    changed = {}
    for module in ("sampling/walks.py", "sampling/pairs.py", "evaluate/report.py",
                   "model/pinsage.py", "ingest/sources.py"):
        before = _versions(root)
        with open(root / module, "a") as f:
            f.write("\n# edited\n")
        code_version.cache_clear()
        after = _versions(root)
        # The release is never reused (each is a new decision), so it is left out.
        changed[module] = {s for s in GRAPH if before[s] != after[s]} - {"release"}
    # eval and compare: the baselines module (its random_walk); ablation: it samples its rows.
    assert changed["sampling/walks.py"] == {"neighbors", "eval", "ablation", "compare"}
    assert changed["sampling/pairs.py"] == {"pairs", "ablation"}
    assert changed["evaluate/report.py"] == {"eval", "ablation", "compare"}
    assert changed["model/pinsage.py"] == {"model", "embeddings", "eval", "ablation", "compare"}
    # neighbors and embeddings: incremental runs check ids are numbered from the old graph.
    assert changed["ingest/sources.py"] == {"graph", "neighbors", "embeddings", "eval", "ablation"}


def test_code_version_reads_a_zipped_package(tmp_path):
    """spark-submit ships the package as a zip: its stages' code hashes are the same."""
    archive = tmp_path / "pipeline.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in PACKAGE.rglob("*.py"):
            z.write(path, path.relative_to(PACKAGE.parent).as_posix())
    root = str(archive / "pipeline")
    assert set(module_files(archive / "pipeline")) == set(module_files())
    assert {n: code_hashes(n, root) for n in GRAPH} == _versions(PACKAGE)
