"""Ingest: read a source graph, validate it, publish the ``graph`` stage.

The stage holds ``nodes`` (dense int64 ids, original ids, type, features),
``edges`` (deduplicated, no self-loops) and ``quarantine`` (bad rows kept
verbatim when ``ingest.on_bad_rows=quarantine``; empty otherwise).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from omegaconf import OmegaConf
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline import config
from pipeline.errors import IngestError
from pipeline.ingest import graph, sources, validate
from pipeline.io import schemas, versioned
from pipeline.io.kinds import ITEM, RETIRED_ID
from pipeline.io.stage import Stage

log = logging.getLogger(__name__)

MIN_ITEMS = 2    # fewer cannot form a single positive pair

STAGE = "graph"
# Data settings only the evaluation report reads (readable names): never a new graph.
REPORT_ONLY = ("names_path", "names_id_col", "names_col")


@dataclass
class IngestResult:
    version: str
    path: str
    counts: dict
    reused: bool


def _stage_config(cfg) -> dict:
    """The part of the config this stage depends on."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {"data": {k: v for k, v in data.items() if k not in REPORT_ONLY},
            "ingest": OmegaConf.to_container(cfg.ingest, resolve=True)}


def _stage(cfg, files: list[str], id_map_from: str | None) -> Stage:
    """The ``graph`` stage: its source files' identities count as parameters; the
    version it keeps ids from is recorded, not fingerprinted (it is always the latest)."""
    files = [versioned.file_identity(f) for f in files]
    return Stage(cfg.run_dir, STAGE, inputs={}, params={**_stage_config(cfg), "files": files},
                 keep=cfg.keep_versions, force=cfg.force,
                 recorded_inputs={"id_map": id_map_from} if id_map_from else {})


def run_ingest(spark: SparkSession, cfg) -> IngestResult:
    """Publish a new ``graph`` version, or reuse the latest if inputs are unchanged."""
    config.check(cfg, "data", "ingest")
    with versioned.clear_read_errors():
        return _ingest(spark, cfg)


def _ingest(spark: SparkSession, cfg) -> IngestResult:
    t0 = time.perf_counter()
    raw = sources.read_source(spark, cfg.data)
    id_map_from = versioned.latest_version(cfg.run_dir, STAGE)
    stage = _stage(cfg, raw.files, id_map_from)
    existing = stage.reusable()
    if existing:
        return IngestResult(existing, str(versioned.resolve(cfg.run_dir, STAGE, existing)),
                            stage.manifest(existing)["counts"], reused=True)

    nodes, edges, quarantine, counts, problems = _edges(spark, cfg, raw, id_map_from)
    nodes, quarantine, feature_problems = _features(cfg, raw, nodes, quarantine, counts)
    with stage.publish() as out:
        _write(spark, out, raw, nodes, edges, quarantine, counts)
        out.manifest.update({
            "counts": counts,
            "problems": problems + feature_problems,
            "bipartite": bool(cfg.data.bipartite),
            "feature_names": raw.feature_names,
            "schema": {"nodes": schemas.describe(schemas.NODES),
                       "edges": schemas.describe(schemas.EDGES),
                       "quarantine": schemas.describe(schemas.QUARANTINE)},
            "seconds": round(time.perf_counter() - t0, 2),
        })
    spark.catalog.clearCache()
    return IngestResult(out.version, str(versioned.resolve(cfg.run_dir, STAGE, out.version)),
                        counts, reused=False)


def _edges(spark: SparkSession, cfg, raw: sources.RawSource, id_map_from: str | None):
    """Validate the edge rows and number the nodes (keeping ``id_map_from``'s numbers):
    ``(nodes, edges, bad rows, counts, problems)``."""
    edge_cols = [c for c in raw.edges.columns if c not in (sources.FILE_COL, sources.CORRUPT_COL)]
    rows_in = raw.edges.count()
    good, bad_edges, problems = validate.split(
        raw.edges, validate.edge_checks(raw), edge_cols, total=rows_in,
        on_bad_rows=cfg.ingest.on_bad_rows, what=f"edges from {raw.path}")
    previous = (read_graph(spark, cfg.run_dir, id_map_from)[0].select("node", "id", "type")
                if id_map_from else None)
    nodes, edges, edge_counts = graph.build_edges(good, raw.columns, cfg.data.bipartite, previous)
    counts = {"edge_rows_in": rows_in,
              "edge_rows_quarantined": sum(p["count"] for p in problems),
              **edge_counts}
    return nodes, edges, bad_edges, counts, problems


def _features(cfg, raw: sources.RawSource, nodes, quarantine, counts: dict):
    """Validate the feature rows (if any) and attach them to the items: ``(nodes, bad rows,
    problems)``; ``counts`` gains the feature counts."""
    features, problems, dim = None, [], 0
    if raw.features is not None:
        checks, dim = validate.feature_checks(raw.features, raw.feature_id_col, raw.feature_col)
        feature_rows = raw.features.count()
        features, bad_feats, problems = validate.split(
            raw.features, checks, ["id", "features"], total=feature_rows,
            on_bad_rows=cfg.ingest.on_bad_rows,
            what=f"features from {cfg.data.features_path or raw.files[-1]}")
        quarantine = quarantine.unionByName(bad_feats)
        counts.update({"feature_rows_in": feature_rows,
                       "feature_rows_quarantined": sum(p["count"] for p in problems)})
    nodes, feature_counts = graph.attach_features(nodes, features, dim)
    counts.update(feature_counts)
    counts["feature_dim"] = dim
    return nodes, quarantine, problems


def _write(spark: SparkSession, out: versioned.Staging, raw: sources.RawSource, nodes, edges,
           quarantine, counts: dict) -> None:
    """Write the three tables; ``counts`` gains the nodes written. Fewer than ``MIN_ITEMS``
    live items stop here, before anything is published."""
    nodes.write.parquet(out.table_path("nodes"))
    edges.write.parquet(out.table_path("edges"))
    quarantine.coalesce(1).write.parquet(out.table_path("quarantine"))
    written = spark.read.parquet(out.table_path("nodes"))
    by_type = {r["type"]: int(r["count"]) for r in written.groupBy("type").count().collect()}
    counts["nodes"] = by_type
    counts["nodes_out"] = sum(by_type.values())
    counts["retired_nodes"] = {r["type"]: int(r["count"]) for r in
                               written.where(F.col("id") == RETIRED_ID)
                               .groupBy("type").count().collect()}
    live = by_type.get(ITEM, 0) - counts["retired_nodes"].get(ITEM, 0)
    if live < MIN_ITEMS:
        raise IngestError(
            f"ingest: {raw.path} gives {live} item(s) ({counts['edge_rows_in']} edge rows in, "
            f"{counts['edge_rows_quarantined']} quarantined); a graph needs at least "
            f"{MIN_ITEMS} items to embed: check data.path, data.src_col and data.dst_col")


def read_graph(spark: SparkSession, run_dir: str, version: str | None = None):
    """``(nodes, edges, manifest)`` of a published graph version (default: latest)."""
    path = versioned.check_version(run_dir, STAGE, version)
    manifest = versioned.read_manifest(run_dir, STAGE, path.name)
    nodes = spark.read.schema(schemas.NODES).parquet(str(path / "nodes"))
    edges = spark.read.schema(schemas.EDGES).parquet(str(path / "edges"))
    return nodes, edges, manifest


def numbered_from(run_dir: str, graph_version: str, ancestor: str) -> bool:
    """Whether ``graph_version``'s id map was carried over (possibly via others) from ``ancestor``.

    Then every item keeps the number it had in ``ancestor``, which is what
    lets incremental sampling and inference reuse rows by node number.
    """
    seen = set()
    version = graph_version
    while version and version not in seen:
        if version == ancestor:
            return True
        seen.add(version)
        try:
            version = versioned.read_manifest(run_dir, STAGE, version).get("inputs", {}).get("id_map")
        except (versioned.StageNotFound, FileNotFoundError):
            return False
    return False


__all__ = ["run_ingest", "read_graph", "numbered_from", "IngestResult", "STAGE"]
