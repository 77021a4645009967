"""The stage graph end to end: what a code edit rebuilds, what a release keeps on disk."""
from __future__ import annotations

import functools
import shutil

from test_refresh import cfg_for, changed, communities, write

from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import stage as stage_mod, versioned
from pipeline.io.code import PACKAGE, code_version
from pipeline.io.manifests import GraphManifest, ModelManifest, NeighborsManifest, served_version
from pipeline.refresh import evaluate as release_gate, rollback, run_refresh
from pipeline.sampling import run_sample
from pipeline.serve import similar_items
from pipeline.train.trainer import run_train

CHAIN = ("graph", "split", "neighbors", "pairs", "batches", "model", "embeddings")


def _chain(spark, cfg) -> dict[str, tuple[str, bool]]:
    """Stage -> (version, reused) of one run of ingest, sample, train and infer."""
    graph = run_ingest(spark, cfg)
    sample = run_sample(spark, cfg)
    model, embeddings = run_train(cfg), run_infer(spark, cfg)
    return {"graph": (graph.version, graph.reused),
            **{s: (v, s in sample.reused) for s, v in sample.versions.items()},
            "model": (model.version, model.reused),
            "embeddings": (embeddings.version, embeddings.reused)}


def test_editing_the_walk_module_rebuilds_neighbors_and_what_follows(spark, make_cfg, tmp_path,
                                                                     monkeypatch):
    """An edit to ``pipeline/sampling/walks.py`` rebuilds the neighbours and every stage after
    them; the graph and the split are reused. The stages' code is read from a copy of the
    package, so that only this edit changes it."""
    copy = tmp_path / "pipeline"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stage_mod, "code_hashes",
                        functools.partial(stage_mod.code_hashes, root=str(copy)))
    src = tmp_path / "e.csv"
    write(src, communities(n=6))
    cfg = cfg_for(make_cfg, src)
    first = _chain(spark, cfg)
    assert set(first) == set(CHAIN) and not any(reused for _, reused in first.values())
    assert all(reused for _, reused in _chain(spark, cfg).values())
    # The typed views' entries are what the stages write: tests that stand in for a stage
    # publish them.
    for view, stage in ((GraphManifest, "graph"), (NeighborsManifest, "neighbors"),
                        (ModelManifest, "model")):
        written = versioned.read_manifest(cfg.run_dir, stage)
        for key, value in view.read(cfg.run_dir).entries().items():
            assert (value.items() <= written[key].items() if key == "counts"
                    else value == written[key]), (stage, key)

    with open(copy / "sampling" / "walks.py", "a") as f:
        f.write("\n# edited\n")
    code_version.cache_clear()
    edited = _chain(spark, cfg)
    rebuilt = {s for s in CHAIN if not edited[s][1]}
    assert rebuilt == {"neighbors", "pairs", "batches", "model", "embeddings"}
    assert all(edited[s][0] != first[s][0] for s in rebuilt)
    assert all(edited[s][0] == first[s][0] for s in ("graph", "split"))
    walks_hash = code_version("pipeline.sampling.memory_mode", str(copy))
    assert versioned.read_manifest(cfg.run_dir, "neighbors")["code"][
        "pipeline.sampling.memory_mode"] == walks_hash


def test_training_runs_after_a_release_keep_what_it_serves(spark, make_cfg, tmp_path):
    """Four ``jobs/train.py`` runs with other seeds after two releases (both kept), keeping
    one version per stage: every version either release names stays on disk, serving
    answers from the release, and rollback restores the first release."""
    src = tmp_path / "e.csv"
    rows = communities(n=8)
    write(src, rows)
    keep = ("keep_versions=1", "refresh.keep_versions=2")
    cfg = cfg_for(make_cfg, src, *keep)
    first = run_refresh(spark, cfg_for(make_cfg, src, *keep, "refresh.retrain=true"))
    write(src, changed(rows))
    second = run_refresh(spark, cfg)
    assert second.versions["graph"] != first.versions["graph"]
    trained = [run_train(cfg_for(make_cfg, src, *keep, f"seed={seed}"))
               for seed in range(1, 5)]
    assert len({t.version for t in trained}) == 4 and not any(t.reused for t in trained)
    assert versioned.latest_version(cfg.run_dir, "model") == trained[-1].version
    for release in (first, second):
        for stage, version in release.versions.items():
            versioned.check_version(cfg.run_dir, stage, version)
    assert versioned.list_versions(cfg.run_dir, "model") == [first.versions["model"],
                                                              trained[-1].version]
    # A newer, unreleased index: serving still answers from the release's.
    newer = release_gate(cfg, run_infer(spark, cfg).version)[1]
    assert versioned.latest_version(cfg.run_dir, "index") == newer != second.versions["index"]
    assert served_version(cfg.run_dir, "index") == second.versions["index"]
    query = [rows[0][1], rows[-1][1]]
    assert similar_items(cfg.run_dir, query, k=5)[0] == similar_items(
        cfg.run_dir, query, k=5, version=second.versions["index"])[0]

    assert rollback(cfg.run_dir) == first.version
    for stage, version in first.versions.items():
        assert versioned.latest_version(cfg.run_dir, stage) == version
    assert similar_items(cfg.run_dir, query, k=5)[0] == similar_items(
        cfg.run_dir, query, k=5, version=first.versions["index"])[0]
