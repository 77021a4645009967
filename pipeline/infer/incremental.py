"""Incremental inference: re-embed only items whose receptive field changed.

With the same model, an item's embedding is a function of its K-layer
receptive field alone: its own features and neighbourhood row (ids and
weights), and recursively those of its neighbours, K levels down. So an item
is *affected* when an item within K hops of it along the ``neighbors`` lists
of the new graph changed its features or its neighbourhood row (or is new);
every other item's previous embedding is exactly what a full run computes.

The affected items need their neighbours' representations after K-1
convolutions, those need theirs after K-2, and so on; :func:`levels` gives
each item the number of convolutions it is needed after, and
:func:`pipeline.infer.embed` computes nothing else.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.ingest import numbered_from
from pipeline.io import schemas, versioned
from pipeline.io.manifests import GraphManifest

log = logging.getLogger(__name__)


@dataclass
class Plan:
    previous: str          # the embeddings version whose rows are reused
    depth: DataFrame       # ``(node, depth)``: items some recomputed embedding needs, and the
                           # convolutions each is needed after (0..K); checkpointed
    computed: int          # rows of ``depth``
    recomputed: int        # rows of ``depth`` at K: the items re-embedded
    changed_items: int     # items whose own input changed (features, neighbourhood, new)
    n_items: int

    @property
    def reused(self) -> int:
        return self.n_items - self.recomputed


def _spread(frontier: DataFrame, edges: DataFrame, seen: DataFrame, src: str, dst: str
            ) -> DataFrame:
    """The ``dst`` ends of ``edges`` whose ``src`` is in ``frontier``, minus ``seen``."""
    return (frontier.join(edges.select(F.col(src).alias("node"), F.col(dst).alias("_to")), "node")
            .select(F.col("_to").alias("node")).distinct().join(seen, "node", "left_anti")
            .localCheckpoint())


def levels(neighbors: DataFrame, changed: DataFrame, num_layers: int) -> DataFrame:
    """``(node, depth)``: per item that needs any, the convolutions to compute for it
    (``num_layers``: re-embed it).

    ``neighbors``: the new ``neighbors`` lists; ``changed``: ``node`` of the
    items whose own input changed. Both reaches are frontiers expanded by
    joins along the lists, so the graph never reaches one machine.
    """
    edges = neighbors.select("node", F.explode("neighbors").alias("nbr")).persist()
    hit = changed.select("node").distinct().localCheckpoint()
    frontier = hit
    for _ in range(num_layers):          # affected: a changed item within K hops
        frontier = _spread(frontier, edges, hit, "nbr", "node")
        hit = hit.unionByName(frontier).localCheckpoint()
    depth = hit.withColumn("depth", F.lit(num_layers))
    need, frontier = hit, hit
    for k in range(num_layers - 1, -1, -1):   # R_k = R_{k+1} and its neighbours
        frontier = _spread(frontier, edges, need, "node", "nbr")
        need = need.unionByName(frontier).localCheckpoint()
        depth = depth.unionByName(frontier.withColumn("depth", F.lit(k)))
    out = depth.select("node", F.col("depth").cast("int")).localCheckpoint()
    edges.unpersist()
    return out


def changed_items(old_items: DataFrame, new_items: DataFrame, old_nb: DataFrame,
                  new_nb: DataFrame) -> DataFrame:
    """``node`` of every new item whose features or neighbourhood row differs from before."""
    def side(items, nb, suffix):
        return (items.select("node", F.col("features").alias(f"f{suffix}"))
                .join(nb.select("node", F.col("neighbors").alias(f"n{suffix}"),
                                F.col("weights").alias(f"w{suffix}")), "node", "left"))
    j = side(new_items, new_nb, "1").join(side(old_items, old_nb, "0"), "node", "left")
    same = (F.col("f0").isNotNull() & F.col("f1").eqNullSafe(F.col("f0"))
            & F.col("n1").eqNullSafe(F.col("n0")) & F.col("w1").eqNullSafe(F.col("w0")))
    return j.where(~same).select("node")


def plan(spark: SparkSession, run_dir: str, previous: str, inputs: dict[str, str], params: dict,
         code: dict[str, str], items: DataFrame, neighbors: DataFrame, *, n_items: int,
         num_layers: int) -> tuple[Plan | None, str]:
    """What to recompute to turn ``embeddings/previous`` into the embeddings of ``inputs``.

    Returns ``(None, reason)`` when ``previous`` cannot be reused: another
    model, other parameters or code, or a graph not numbered from its graph.
    """
    try:
        prev = versioned.read_manifest(run_dir, "embeddings", previous)
        prev_graph = prev["inputs"]["graph"]
        old_nodes = versioned.resolve(run_dir, "graph", prev_graph) / "nodes"
        old_nb_dir = versioned.resolve(run_dir, "neighbors", prev["inputs"]["neighbors"])
        old_n_items = GraphManifest.read(run_dir, prev_graph).n_items
    except (versioned.StageNotFound, FileNotFoundError, KeyError) as e:
        return None, f"embeddings/{previous} or its inputs are gone ({e})"
    if prev["inputs"].get("model") != inputs["model"]:
        return None, f"it was made with model/{prev['inputs'].get('model')}"
    if prev.get("config") != params:
        return None, f"it was made with other parameters ({prev.get('config')})"
    if prev.get("code") != code:
        return None, "it was made by other code"
    if not numbered_from(run_dir, inputs["graph"], prev_graph):
        return None, f"graph/{inputs['graph']} is not numbered from graph/{prev_graph}"
    if old_n_items > n_items:
        return None, "fewer item slots than before"
    old_items = (spark.read.schema(schemas.NODES).parquet(str(old_nodes))
                 .where(F.col("type") == schemas.ITEM))
    old_nb = schemas.conform(spark.read.parquet(str(old_nb_dir / "neighbors")),
                             schemas.NEIGHBORS, "neighbors")
    changed = changed_items(old_items, items, old_nb, neighbors).localCheckpoint()
    depth = levels(neighbors, changed, num_layers)
    counts = depth.agg(F.count(F.lit(1)).alias("computed"),
                       F.sum((F.col("depth") == num_layers).cast("long")).alias("recomputed")
                       ).first()
    p = Plan(previous, depth, int(counts["computed"]), int(counts["recomputed"] or 0),
             changed.count(), n_items)
    log.info("incremental inference: %d items changed, %d of %d to re-embed (%d computed at "
             "some layer)", p.changed_items, p.recomputed, n_items, p.computed)
    return p, ""


__all__ = ["Plan", "changed_items", "levels", "plan"]
