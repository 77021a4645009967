"""The scheduled refresh: one command that brings a run directory's release up to date.

ingest -> sample (split, neighbours; incremental) -> [train] -> infer -> index
-> evaluate -> release. A *release* (stage ``release``) is a manifest naming
the version of every stage it is made of, with its hit-rate; it is what
serving reads. Every stage still publishes atomically on its own, so a kill at
any point leaves the current release and all its versions intact; a refresh
that fails or is refused puts every stage's ``_LATEST`` back on the current
release's versions.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from pyspark.sql import SparkSession

from pipeline import config, metrics as M
from pipeline.errors import PipelineError
from pipeline.evaluate import data as eval_data
from pipeline.evaluate.baselines import embedding_ranks
from pipeline.evaluate.index import publish_index
from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.io.embeddings import read_embeddings
from pipeline.io.manifests import ReleaseManifest, released_versions
from pipeline.io.stage import Stage
from pipeline.refresh.lock import RunLock
from pipeline.sampling import run_sample
from pipeline.train.trainer import run_train, training_inputs

log = logging.getLogger(__name__)

STAGE = versioned.RELEASE
HIT_RATE = "hit_rate@10"
# Stages a release is made of (pairs and batches only when it retrains).
SERVED = ("graph", "split", "neighbors", "model", "embeddings", "index")


class Refused(PipelineError):
    """The refresh ran but publishes nothing: no change, or a quality regression."""


@dataclass
class RefreshResult:
    version: str
    previous: str | None
    versions: dict[str, str]
    metrics: dict
    counts: dict = field(default_factory=dict)
    took_over_lock: dict | None = None


def _restore(run_dir: str, release: ReleaseManifest | None) -> None:
    """Point every stage the release names back at its version."""
    if release is None:
        return
    for stage, version in release.versions.items():
        if versioned.latest_version(run_dir, stage) != version:
            versioned.point_latest(run_dir, stage, version)
            log.info("%s/_LATEST back on %s", stage, version)


def rollback(run_dir: str) -> str:
    """Make the release before the current one current again; returns its version."""
    with RunLock(run_dir):
        releases = versioned.list_versions(run_dir, STAGE)
        latest = versioned.latest_version(run_dir, STAGE)
        if latest not in releases or releases.index(latest) == 0:
            current = f"release/{latest}" if latest else "the first release (there is none yet)"
            raise PipelineError(f"refresh: nothing to roll back to in {run_dir}: no release "
                                f"before {current}")
        target = releases[releases.index(latest) - 1]
        manifest = ReleaseManifest.read(run_dir, target)
        for stage, version in manifest.versions.items():
            try:
                versioned.resolve(run_dir, stage, version)
            except versioned.StageNotFound:
                raise PipelineError(f"cannot roll back to release/{target}: {stage}/{version} "
                                    f"is gone") from None
        _restore(run_dir, manifest)
        versioned.point_latest(run_dir, STAGE, target)
    log.info("rolled back release %s -> %s", latest, target)
    return target


def _stages(run_dir: str) -> list[str]:
    root = Path(run_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")) \
        if root.is_dir() else []


def prune(run_dir: str, keep: int) -> list[str]:
    """Keep ``keep`` releases; delete stage versions no kept release uses (never a ``_LATEST``)."""
    versioned.prune(run_dir, STAGE, keep)
    removed = []
    for stage in _stages(run_dir):
        spared = released_versions(run_dir, stage)
        if not spared:                      # a stage no release serves (the ablation, ...)
            continue
        spared.add(versioned.latest_version(run_dir, stage))
        for v in versioned.list_versions(run_dir, stage):
            if v not in spared:
                shutil.rmtree(versioned.stage_dir(run_dir, stage) / v, ignore_errors=True)
                removed.append(f"{stage}/{v}")
    if removed:
        log.info("pruned %d stage versions no kept release uses", len(removed))
    return removed


def evaluate(cfg, embeddings_version: str, split_version: str | None = None
             ) -> tuple[dict, str]:
    """Hit-rate@K of the embeddings on the split's held-out pairs (the latest split where not
    given); publishes ``index``.

    The lean part of ``jobs/evaluate.py`` the gate needs (no baselines, no
    report). With a model trained on an earlier split this is still fair on a
    growing source: leave-last-out holds out each user's latest interactions,
    which that model never trained on.
    """
    ev, seed = cfg.eval, int(cfg.seed)
    data = eval_data.held_out_rows(cfg, ev.kind, split_version)
    emb = read_embeddings(cfg.run_dir, embeddings_version)
    if len(emb.node) != data.n_items or not np.array_equal(emb.node, np.arange(data.n_items)):
        raise PipelineError(f"embeddings/{emb.version} do not cover the {data.n_items} items "
                            f"of graph/{data.graph_version}")
    ks = sorted(set(int(k) for k in ev.ks) | {10})
    uniq = np.unique(data.queries)
    idx = publish_index(cfg.run_dir, ev, emb.version, uniq, keep=cfg.keep_versions,
                        force=cfg.force, seed=seed)
    metrics = M.summarize(embedding_ranks(data, emb.matrix, emb.queries, ks), ks)
    metrics["queries"] = int(len(data.queries))
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}, \
        idx.version


def run_refresh(spark: SparkSession, cfg) -> RefreshResult:
    """Bring the release up to date; raises :class:`Refused` when nothing is published."""
    r, run_dir = cfg.refresh, cfg.run_dir
    config.check(cfg, "refresh")
    t0 = time.perf_counter()
    with RunLock(run_dir) as lock:
        for stage in _stages(run_dir):
            versioned.clean_debris(run_dir, stage)
        prev = ReleaseManifest.current(run_dir)
        if prev is None and versioned.latest_version(run_dir, "model") is None and not r.retrain:
            raise PipelineError(f"no published model in {run_dir}: run jobs/train.py first, "
                                f"or refresh.retrain=true")
        # Stages keep every version; the refresh prunes by release once it has published.
        scfg = cfg.copy()
        OmegaConf.update(scfg, "keep_versions", 1_000_000)
        try:
            with versioned.clear_read_errors():
                result = _run(spark, scfg, prev)
        except BaseException:
            _restore(run_dir, prev)
            raise
        versions, metrics, counts = result
        if prev is not None and all(versions[s] == prev.versions.get(s) for s in SERVED):
            raise Refused(f"nothing changed since release/{prev.version}; not publishing")
        if prev is not None:
            before = float(prev.metrics[HIT_RATE])
            if metrics[HIT_RATE] < before - r.max_regression:
                _restore(run_dir, prev)
                raise Refused(f"hit_rate@10 {metrics[HIT_RATE]:.4f} is more than "
                              f"refresh.max_regression={r.max_regression} below release/"
                              f"{prev.version} ({before:.4f}); not publishing")
        counts["seconds"] = round(time.perf_counter() - t0, 2)
        # A release is always new (it records what was checked); never reused.
        release = Stage(run_dir, STAGE, versions,
                        {"refresh": OmegaConf.to_container(r, resolve=True)},
                        keep=max(1, r.keep_versions))
        with release.publish() as out:
            out.manifest.update(ReleaseManifest(versions, metrics, counts,
                                                prev.version if prev else None).entries())
        prune(run_dir, max(1, r.keep_versions))
    return RefreshResult(out.version, prev.version if prev else None, versions, metrics,
                         counts, lock.took_over)


def _run(spark, cfg, prev):
    """Every stage, each handed the versions the stages before it just published."""
    r = cfg.refresh
    graph = run_ingest(spark, cfg)
    neighbors_from = prev.versions["neighbors"] if prev is not None and r.incremental else None
    sample = run_sample(spark, cfg, graph=graph.version, neighbors_from=neighbors_from,
                        training=bool(r.retrain))
    versions = {"graph": graph.version, **sample.versions}
    if r.retrain:
        versions["model"] = run_train(cfg, inputs=training_inputs(graph.version, sample)).version
    else:   # the model published last, by this refresh or by jobs/train.py
        versions["model"] = versioned.latest_version(cfg.run_dir, "model")
    embeddings_from = (prev.versions["embeddings"]
                       if prev is not None and r.incremental and not r.retrain else None)
    infer = run_infer(spark, cfg, embeddings_from=embeddings_from, inputs={
        s: versions[s] for s in ("model", "neighbors", "graph")})
    versions["embeddings"] = infer.version
    metrics, versions["index"] = evaluate(cfg, infer.version, versions["split"])
    nb = sample.counts.get("neighbors", {})
    counts = {"graph": {k: graph.counts.get(k) for k in ("nodes", "retired_nodes", "edges_out")},
              "neighbors": {"recomputed_items": nb.get("recomputed_items", nb.get("items")),
                            "reused_items": nb.get("reused_items", 0),
                            "reused_from": nb.get("reused_from"),
                            "changed_edges": nb.get("changed_edges")},
              "embeddings": {k: infer.counts.get(k) for k in ("recomputed_items", "reused_items",
                                                              "reused_from", "changed_items")},
              "reused_stages": sorted(set(sample.reused) | ({"graph"} if graph.reused else set())
                                      | ({"embeddings"} if infer.reused else set()))}
    return versions, metrics, counts


__all__ = ["RefreshResult", "Refused", "prune", "rollback", "run_refresh", "STAGE"]
