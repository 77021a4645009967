"""``sample.mode=join``: the mass propagates by DataFrame joins, for graphs too big for memory.

The integer-weighted adjacency is a table ``(node, nbr, w)`` beside
``(node, deg, strength)``, and the frontier a table ``(start, sdeg, node,
mass)``. A half hop prunes the frontier (memory mode's test, the same float
operations), divides each mass by its node's strength, joins the adjacency
and sums per ``(start, node)``. Every sum is of integers, so the scores equal
memory mode's bit for bit, whatever order Spark adds them in; they are ranked
by the same NumPy code (:func:`pipeline.sampling.ppr.rank`) inside
``mapInArrow``. No executor ever holds the whole graph.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.sampling import arrow, ppr

log = logging.getLogger(__name__)

RANKED = "node long, neighbors array<long>, weights array<float>, hard array<long>"


def weight_scale(edges: DataFrame) -> float:
    """:func:`pipeline.sampling.ppr.scale_of` of the edge weights, by one aggregation."""
    w = F.col("weight").cast("double")
    row = edges.where(w > 0).agg(F.max(w).alias("top"),
                                 F.min((w == F.floor(w).cast("double")).cast("int")).alias("ints")
                                 ).first()
    return ppr.weight_scale(float(row["top"] or 0.0), row["ints"] is None or bool(row["ints"]))


def adjacency(edges: DataFrame, scale: float) -> tuple[DataFrame, DataFrame]:
    """``(adj, nodes)``: ``(node, nbr, w)`` both ways, duplicates summed; ``(node, deg, strength)``."""
    w = F.col("weight").cast("double")
    wi = F.greatest(F.floor(w * F.lit(scale) + F.lit(0.5)), F.lit(1).cast("long"))
    e = edges.where(w > 0).select("src", "dst", wi.alias("w"))
    both = (e.select(F.col("src").alias("node"), F.col("dst").alias("nbr"), "w")
            .unionByName(e.select(F.col("dst").alias("node"), F.col("src").alias("nbr"), "w")))
    adj = both.groupBy("node", "nbr").agg(F.sum("w").alias("w"))
    nodes = adj.groupBy("node").agg(F.count(F.lit(1)).alias("deg"), F.sum("w").alias("strength"))
    return adj, nodes


def _rank(**kw):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts)
        nodes, owner = np.unique(arrow.column(table, "start"), return_inverse=True)
        item = arrow.column(table, "item")
        r = ppr.rank(nodes, owner.astype(np.int64), item, item, arrow.column(table, "mass"),
                     arrow.column(table, "strength"), **kw)
        yield arrow.ranked_batch(nodes, r, np.zeros(len(nodes), np.int64)).drop_columns(["pushes"])
    return run


def propagate(spark: SparkSession, edges: DataFrame, n_items: int, bipartite: bool, *,
              walk_length: int, restart_prob: float, push_threshold: float, partitions: int,
              starts: DataFrame | None = None) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame]:
    """``(items, visits, pushes, nodes)``: the starts; ``(start, item, mass, strength)``
    (the start's own row included); ``(start, pushes)``; ``(node, deg, strength)``."""
    adj, nodes = adjacency(edges, weight_scale(edges))
    adj, nodes = adj.persist(), nodes.persist()
    items = (spark.range(0, n_items, numPartitions=partitions).withColumnRenamed("id", "node")
             if starts is None else starts.select("node").repartition(partitions))
    frontier = (items.join(nodes, "node").where(F.col("deg") > 0)
                .select(F.col("node").alias("start"), F.col("deg").alias("sdeg"), "node",
                        F.lit(ppr.ONE).cast("long").alias("mass")))
    eps_one = push_threshold * float(ppr.ONE)
    keep = 1.0 - restart_prob
    visits, pushes = [], []
    t0 = time.perf_counter()
    for hop in range(1, walk_length + 1):
        frontier = frontier.withColumn(
            "mass", F.floor(F.col("mass").cast("double") * F.lit(keep)).cast("long"))
        for _half in range(2 if bipartite else 1):
            per_start = F.lit(eps_one) / F.col("sdeg").cast("double")
            pushed = (frontier.join(nodes, "node")
                      .where(F.col("mass").cast("double") >= per_start * F.col("deg").cast("double")))
            pushes.append(pushed.select("start", "deg"))
            moved = (pushed.select("start", "sdeg", "node", F.expr("mass div strength").alias("y"))
                     .where(F.col("y") > 0).join(adj, "node")
                     .select("start", "sdeg", F.col("nbr").alias("node"),
                             (F.col("y") * F.col("w")).alias("mass")))
            frontier = moved.groupBy("start", "sdeg", "node").agg(F.sum("mass").alias("mass"))
            frontier = frontier.localCheckpoint()
        log.info("join mode: hop %d/%d done, frontier of %d (start, item) rows (%.1fs)",
                 hop, walk_length, frontier.count(), time.perf_counter() - t0)
        visits.append(frontier.select("start", F.col("node").alias("item"), "mass"))
    work = _union(pushes).groupBy("start").agg(F.sum("deg").alias("pushes"))
    scores = (_union(visits).groupBy("start", "item").agg(F.sum("mass").alias("mass"))
              .join(nodes.select(F.col("node").alias("item"), "strength"), "item"))
    return items, scores, work, nodes


def sample(spark: SparkSession, edges: DataFrame, n_items: int, bipartite: bool, *,
           walk_length: int, restart_prob: float, push_threshold: float, degree_exponent: float,
           seed: int, num_neighbors: int, window: tuple[int, int], num_hard: int,
           partitions: int, starts: DataFrame | None = None) -> DataFrame:
    """Rows of ``arrow.RANKED_SCHEMA`` for every item ``0 .. n_items-1`` (or the ``node``s of ``starts``)."""
    items, scores, work, _ = propagate(spark, edges, n_items, bipartite, walk_length=walk_length,
                                       restart_prob=restart_prob, push_threshold=push_threshold,
                                       partitions=partitions, starts=starts)
    ranked = (scores.repartition(partitions, "start")
              .mapInArrow(_rank(degree_exponent=degree_exponent, seed=seed,
                                num_neighbors=num_neighbors, window=window, num_hard=num_hard),
                          RANKED)
              .join(work.withColumnRenamed("start", "node"), "node"))
    empty = (items.join(ranked.select("node"), "node", "left_anti")
             .select("node", F.array().cast("array<long>").alias("neighbors"),
                     F.array().cast("array<float>").alias("weights"),
                     F.array().cast("array<long>").alias("hard"), F.lit(0).cast("long").alias("pushes")))
    return ranked.unionByName(empty)


QUALITY = "start long, agree double, close double, ratio double"


def quality_per_start(spark: SparkSession, edges: DataFrame, n_items: int, bipartite: bool,
                      starts: np.ndarray, *, walk_length: int, restart_prob: float,
                      push_threshold: float, partitions: int, **quality_kw
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pipeline.sampling.ppr.quality_per_start` of a few sorted ``starts``.

    Each start's pruned and unpruned visits meet in one task, which computes
    its three values: only those reach the driver, never the visits.
    """
    starts = np.asarray(starts, np.int64)
    chosen = spark.createDataFrame(pa.table({"node": starts}).to_pandas())
    walk = dict(walk_length=walk_length, restart_prob=restart_prob, partitions=partitions,
                starts=chosen)
    _, approx, _, nodes = propagate(spark, edges, n_items, bipartite,
                                    push_threshold=push_threshold, **walk)
    exact = (propagate(spark, edges, n_items, bipartite, push_threshold=0.0, **walk)[1]
             if push_threshold > 0 else approx)
    rows = (approx.withColumn("exact", F.lit(False))
            .unionByName(exact.withColumn("exact", F.lit(True)))
            .join(nodes.select(F.col("node").alias("start"), F.col("deg").alias("sdeg")), "start"))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        t = pa.Table.from_batches(parts)
        start = arrow.column(t, "start")
        mine, first = np.unique(start, return_index=True)
        sides = [t.filter(pc.equal(t.column("exact"), flag)) for flag in (False, True)]
        a, e = (ppr.Visits(mine, np.searchsorted(mine, arrow.column(x, "start")),
                           arrow.column(x, "item"), arrow.column(x, "mass"),
                           arrow.column(x, "strength")) for x in sides)
        agree, close, ratio = ppr.quality_per_start(
            a, e, arrow.column(t, "sdeg")[first], push_threshold=push_threshold, **quality_kw)
        yield pa.RecordBatch.from_arrays([pa.array(mine, pa.int64()), pa.array(agree),
                                          pa.array(close), pa.array(ratio)],
                                         names=["start", "agree", "close", "ratio"])

    got = rows.repartition(partitions, "start").mapInArrow(run, QUALITY).toArrow()
    at = np.searchsorted(starts, arrow.column(got, "start"))
    agree, close = np.full(len(starts), np.nan), np.full(len(starts), np.nan)
    ratio = np.zeros(len(starts))
    for out, name in ((agree, "agree"), (close, "close"), (ratio, "ratio")):
        out[at] = arrow.column(got, name, np.float64)
    return agree, close, ratio


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out
