"""The split: which edges every later stage may see, and which are held out to score it.

Published as stage ``split`` before any sampling, so held-out edges never
leak: ``train_edges`` (the graph the rest sees) and ``holdout`` (validation
and test rows, ``schemas.HOLDOUT``), plus ``new_items`` under
``split.protocol=new_items``. The protocols are in
:mod:`pipeline.split.protocols`, the inductive one in
:mod:`pipeline.split.new_items`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import config
from pipeline.ingest import read_graph
from pipeline.io import schemas, versioned
from pipeline.io.manifests import GraphManifest, SplitManifest
from pipeline.io.stage import Stage
from pipeline.split import new_items, protocols

STAGE = "split"


@dataclass
class SplitResult:
    version: str
    reused: bool
    counts: dict = field(default_factory=dict)


def run_split(spark: SparkSession, cfg, *, graph: str | None = None) -> SplitResult:
    """Publish ``split`` of the graph (``graph``: its version, else the latest)."""
    _, edges, raw = read_graph(spark, cfg.run_dir, graph)
    return publish_split(spark, cfg, edges, GraphManifest.of(raw))


def _params(cfg, graph: GraphManifest, source: tuple[str, str] | None
            ) -> tuple[dict[str, str], dict]:
    """The stage's ``(inputs, params)``: what its output depends on, nothing else."""
    sp, seed = cfg.split, int(cfg.seed)
    if source is not None:
        return ({"graph": graph.version, "source_split": source[1]},
                {"view": "inductive", "seed": seed})
    params = {"protocol": sp.protocol, "holdout_fraction": sp.holdout_fraction, "seed": seed}
    if sp.protocol == new_items.PROTOCOL:
        params.update(new_item_fraction=sp.new_item_fraction,
                      new_item_min_degree=sp.new_item_min_degree)
    return {"graph": graph.version}, params


def _held_out(spark: SparkSession, cfg, edges: DataFrame, graph: GraphManifest,
              source: tuple[str, str] | None) -> tuple[DataFrame, DataFrame, DataFrame | None, str]:
    """``(train edges, holdout, new items or None, the protocol rows were held out by)``."""
    sp, seed = cfg.split, int(cfg.seed)
    if source is not None:
        src_dir = versioned.check_version(source[0], STAGE, source[1])
        train, held = new_items.view(
            spark.read.schema(schemas.EDGES).parquet(str(src_dir / "train_edges")),
            spark.read.schema(schemas.HOLDOUT).parquet(str(src_dir / "holdout")),
            spark.read.schema(schemas.NEW_ITEMS).parquet(str(src_dir / new_items.TABLE)))
        return train, held, None, SplitManifest.read(source[0], source[1]).base_protocol
    if sp.protocol == new_items.PROTOCOL:
        has_time = edges.where(F.col("time").isNotNull()).limit(1).count() > 0
        protocol = new_items.base_protocol(has_time)
        train, held = protocols.split_edges(edges, protocol, graph.bipartite, seed,
                                            sp.holdout_fraction)
        return train, held, new_items.choose(train, graph.n_items, graph.bipartite, seed,
                                             sp.new_item_fraction, sp.new_item_min_degree), protocol
    train, held = protocols.split_edges(edges, sp.protocol, graph.bipartite, seed,
                                        sp.holdout_fraction)
    return train, held, None, sp.protocol


def publish_split(spark: SparkSession, cfg, edges: DataFrame, graph: GraphManifest,
                  source: tuple[str, str] | None = None) -> SplitResult:
    """Publish ``split``: the protocol's held-out rows, or the inductive view of ``source``'s
    (``(run_dir, split version)``, :mod:`pipeline.split.new_items`)."""
    config.check(cfg, "split")
    inputs, params = _params(cfg, graph, source)
    stage = Stage(cfg.run_dir, STAGE, inputs, params, keep=cfg.keep_versions, force=cfg.force)
    if found := stage.reusable():
        return SplitResult(found, True, stage.manifest(found)["counts"])
    t0 = time.perf_counter()
    train, held, new, protocol = _held_out(spark, cfg, edges, graph, source)
    with stage.publish() as out:
        train.orderBy("src", "dst").write.parquet(out.table_path("train_edges"))
        held.orderBy("kind", "user").coalesce(1).write.parquet(out.table_path("holdout"))
        by_kind = {r["kind"]: r["count"] for r in spark.read.parquet(out.table_path("holdout"))
                   .groupBy("kind").count().collect()}
        counts = {"edges_in": graph.edges,
                  "train_edges": spark.read.parquet(out.table_path("train_edges")).count(),
                  "validation": by_kind.get("validation", 0), "test": by_kind.get("test", 0),
                  "seconds": round(time.perf_counter() - t0, 2)}
        schema = {"train_edges": schemas.describe(schemas.EDGES),
                  "holdout": schemas.describe(schemas.HOLDOUT)}
        manifest = {"protocol": cfg.split.protocol if source is None else protocol}
        if new is not None:
            new.orderBy("node").coalesce(1).write.parquet(out.table_path(new_items.TABLE))
            counts["new_items"] = spark.read.parquet(out.table_path(new_items.TABLE)).count()
            schema[new_items.TABLE] = schemas.describe(schemas.NEW_ITEMS)
            manifest["base_protocol"] = protocol
        if source is not None:
            manifest.update(view="inductive", source_split=source[1])
        out.manifest.update({"counts": counts, "schema": schema, **manifest})
    return SplitResult(out.version, False, counts)


__all__ = ["SplitResult", "STAGE", "publish_split", "run_split"]
