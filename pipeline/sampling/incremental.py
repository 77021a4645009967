"""Incremental neighbourhoods: rank again only the items whose visits can see a change.

An item's neighbourhood is a function of the seed and of the adjacency rows
(neighbours, integer weights, hence degrees and strengths) of the nodes its
mass is pushed from — half-hop positions ``0 .. 2L-1`` (bipartite) or hop
positions ``0 .. L-1`` (item-item) — and of the strength of the items it
reaches at the end (the score divides by ``degree^β``): positions up to
``2L`` or ``L``. So an item with no endpoint of a changed edge within that
many half hops, in the old graph and in the new, gets exactly the same
propagation, scores and tie-breaks, and its previous neighbourhood and hard
candidates are reused as they are: the result equals a full re-sample bit for
bit. A change of the weight quantisation (:func:`pipeline.sampling.ppr.scale_of`,
which moves only for non-integer weights) changes every row: then nothing is reused.

Needs the previous version's numbering (ingest carries the id map over: items
keep their numbers; users move by the number of item slots added).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.ingest import numbered_from
from pipeline.io import schemas, versioned
from pipeline.io.manifests import GraphManifest, NeighborsManifest, SplitManifest
from pipeline.sampling import join_mode

log = logging.getLogger(__name__)


@dataclass
class Plan:
    previous: str            # the neighbors version whose rows are reused
    starts: DataFrame        # ``node``: the items to rank again (checkpointed)
    recomputed: int          # how many
    changed_edges: int
    n_items: int

    @property
    def reused(self) -> int:
        return self.n_items - self.recomputed


def _edges(spark: SparkSession, run_dir: str, split_version: str) -> DataFrame:
    path = versioned.resolve(run_dir, "split", split_version) / "train_edges"
    return spark.read.schema(schemas.EDGES).parquet(str(path)).select("src", "dst", "weight")


def _reach(edges: DataFrame, changed: DataFrame, hops: int) -> DataFrame:
    """``(node)``: the ends of the ``changed`` edges and every node within ``hops`` of
    one over ``edges`` (either direction), a frontier expanded by joins."""
    adj = (edges.select(F.col("src").alias("node"), F.col("dst").alias("nbr"))
           .unionByName(edges.select(F.col("dst").alias("node"), F.col("src").alias("nbr")))
           .distinct().persist())
    reached = (changed.select(F.col("src").alias("node"))
               .unionByName(changed.select(F.col("dst").alias("node"))).distinct()
               .localCheckpoint())
    frontier = reached
    for _ in range(hops):
        frontier = (frontier.join(adj, "node").select(F.col("nbr").alias("node")).distinct()
                    .join(reached, "node", "left_anti").localCheckpoint())
        if frontier.isEmpty():
            break
        reached = reached.unionByName(frontier).localCheckpoint()
    adj.unpersist()
    return reached


def plan(spark: SparkSession, run_dir: str, previous: str, split_version: str, params: dict,
         code: dict[str, str], window: tuple, n_items: int, bipartite: bool
         ) -> tuple[Plan | None, str]:
    """Items to rank again from ``previous`` (a ``neighbors`` version), or ``(None, reason)``.

    ``params``: :func:`pipeline.sampling.neighbor_params`, which must all match, as must
    ``code`` (the stage's source hashes). The changed edges are a join of the
    two edge tables and their reach a frontier expanded by joins, so no edge
    list reaches the driver.
    """
    try:
        prev = NeighborsManifest.read(run_dir, previous)
        prev_split = prev.split
        prev_graph = SplitManifest.read(run_dir, prev_split).graph
        graph = SplitManifest.read(run_dir, split_version).graph
        pg = GraphManifest.read(run_dir, prev_graph)
    except (versioned.StageNotFound, FileNotFoundError, KeyError) as e:
        return None, f"previous neighbors/{previous} or its inputs are gone ({e})"
    if any(prev.params.get(k) != v for k, v in params.items()):
        return None, "neighbourhood parameters changed"
    if prev.code != code:
        return None, "the code that ranks neighbourhoods changed"
    if list(prev.hard_window_ranks) != list(window):
        return None, "the hard-negative window moved with the catalogue size"
    if pg.bipartite != bipartite or not numbered_from(run_dir, graph, prev_graph):
        return None, f"graph/{graph} is not numbered from graph/{prev_graph}"
    old_items = pg.n_items
    if old_items > n_items:
        return None, "fewer item slots than before"
    old, new = _edges(spark, run_dir, prev_split), _edges(spark, run_dir, split_version)
    if join_mode.weight_scale(old) != join_mode.weight_scale(new):
        return None, "the edge weights are quantised on another scale"
    if bipartite:   # users follow the item slots
        old = old.withColumn("src", F.col("src") + F.lit(n_items - old_items))
    both = (old.withColumnRenamed("weight", "w0")
            .join(new.withColumnRenamed("weight", "w1"), ["src", "dst"], "full_outer"))
    changed = both.where(F.col("w0").isNull() | F.col("w1").isNull()
                         | (F.col("w0") != F.col("w1"))).select("src", "dst").localCheckpoint()
    n_changed = changed.count()
    # Rows read: positions 0 .. reach in half hops (bipartite) or hops.
    reach = 2 * int(params["walk_length"]) if bipartite else int(params["walk_length"])
    reached = _reach(old.select("src", "dst").unionByName(new.select("src", "dst")), changed,
                     reach)
    starts = (reached.where(F.col("node") < n_items)
              .unionByName(spark.range(old_items, n_items).select(F.col("id").alias("node")))
              .distinct().localCheckpoint())
    recomputed = starts.count()
    log.info("incremental neighbourhoods: %d changed edges, %d of %d items to rank again",
             n_changed, recomputed, n_items)
    return Plan(previous, starts, recomputed, n_changed, n_items), ""
