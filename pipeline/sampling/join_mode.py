"""``sample.mode=join``: walks advance by DataFrame joins, for graphs too big for memory.

The adjacency becomes a table of *slots* ``(node, slot) -> neighbour`` with
Walker alias tables; a walker draws ``(slot, accept)`` with the same
counter-based numbers as memory mode (a ``mapInArrow`` over the walkers), then
one join on ``(cur, slot)`` moves it. No executor ever holds the whole graph.
Visit counts are ranked by the same NumPy code as in memory mode, so both
modes give identical neighbourhoods for the same seed.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.sampling import arrow, walks

log = logging.getLogger(__name__)

DRAWN = "start long, walk long, cur long, slot long, accept double"
SLOTS = "node long, slot long, nbr long, prob double, alias_nbr long"


def slots_table(edges: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(slots, degrees)`` of the walkable graph (both directions, duplicates merged)."""
    both = (edges.select(F.col("src").alias("a"), F.col("dst").alias("b"), "weight")
            .unionByName(edges.select(F.col("dst").alias("a"), F.col("src").alias("b"), "weight")))
    merged = both.groupBy("a", "b").agg(F.sum(F.col("weight").cast("double")).alias("w"))
    rows = merged.groupBy("a").agg(F.array_sort(F.collect_list(F.struct("b", "w"))).alias("adj"))

    def alias(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            adj = batch.column("adj")
            offsets = adj.offsets.to_numpy().astype(np.int64)
            flat = adj.flatten()
            nbr = flat.field("b").to_numpy().astype(np.int64)
            w = flat.field("w").to_numpy().astype(np.float64)
            rel = offsets - offsets[0]
            prob, alias_slot = walks.alias_rows(w, rel)
            deg = np.diff(rel)
            row_start = np.repeat(rel[:-1], deg)
            yield pa.RecordBatch.from_arrays([
                pa.array(np.repeat(arrow.column(batch, "a"), deg)),
                pa.array(np.arange(len(nbr)) - row_start),
                pa.array(nbr), pa.array(prob), pa.array(nbr[row_start + alias_slot]),
            ], names=["node", "slot", "nbr", "prob", "alias_nbr"])

    degrees = rows.select(F.col("a").alias("node"), F.size("adj").cast("long").alias("deg"))
    slots = rows.mapInArrow(alias, SLOTS)
    d1 = degrees.select(F.col("node").alias("nbr"), F.col("deg").alias("nbr_deg"))
    d2 = degrees.select(F.col("node").alias("alias_nbr"), F.col("deg").alias("alias_deg"))
    return slots.join(d1, "nbr").join(d2, "alias_nbr"), degrees


def _draw(seed: int, step: int, half: int, restart_prob: float):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pipeline.sampling import rng
        for batch in batches:
            start, walk = arrow.column(batch, "start"), arrow.column(batch, "walk")
            cur, deg = arrow.column(batch, "cur"), arrow.column(batch, "deg")
            keys = rng.walker_keys(seed, start, walk)
            if half == 0:
                go = walks.keep_going(keys, step, restart_prob)
                start, walk, cur, deg, keys = start[go], walk[go], cur[go], deg[go], keys[go]
            slot, accept = walks.draw(keys, step, half, deg)
            yield pa.RecordBatch.from_arrays(
                [pa.array(start), pa.array(walk), pa.array(cur), pa.array(slot), pa.array(accept)],
                names=["start", "walk", "cur", "slot", "accept"])
    return run


def _rank(n_items: int, num_neighbors: int, window: tuple[int, int], num_hard: int):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts)
        start = arrow.column(table, "start")
        nodes, owner = np.unique(start, return_inverse=True)
        ranked = walks.rank_visits(len(nodes), owner.astype(np.int64), arrow.column(table, "item"),
                                   arrow.column(table, "count"), num_neighbors, window, num_hard)
        yield arrow.ranked_batch(nodes, ranked)
    return run


def sample(spark: SparkSession, edges: DataFrame, n_items: int, bipartite: bool, *,
           num_walks: int, walk_length: int, restart_prob: float, seed: int,
           num_neighbors: int, window: tuple[int, int], num_hard: int,
           partitions: int, starts: DataFrame | None = None) -> DataFrame:
    """Rows of ``arrow.RANKED_SCHEMA`` for every item ``0 .. n_items-1`` (or the ``node``s of ``starts``)."""
    slots, degrees = slots_table(edges)
    slots = slots.persist()
    items = (spark.range(0, n_items, numPartitions=partitions).withColumnRenamed("id", "node")
             if starts is None else starts.select("node").repartition(partitions))
    walkers = (items.join(degrees, "node").where(F.col("deg") > 0)
               .crossJoin(spark.range(num_walks).withColumnRenamed("id", "walk"))
               .select(F.col("node").alias("start"), "walk", F.col("node").alias("cur"), "deg"))
    visits = []
    t0 = time.perf_counter()
    for step in range(1, walk_length + 1):
        for half in range(2 if bipartite else 1):
            drawn = walkers.mapInArrow(_draw(seed, step, half, restart_prob), DRAWN)
            moved = drawn.join(slots, (drawn.cur == slots.node) & (drawn.slot == slots.slot))
            take = F.col("accept") < F.col("prob")
            walkers = moved.select(
                "start", "walk",
                F.when(take, F.col("nbr")).otherwise(F.col("alias_nbr")).alias("cur"),
                F.when(take, F.col("nbr_deg")).otherwise(F.col("alias_deg")).alias("deg"))
        walkers = walkers.localCheckpoint()
        log.info("join mode: hop %d/%d done, %d walkers still walking (%.1fs)",
                 step, walk_length, walkers.count(), time.perf_counter() - t0)
        visits.append(walkers.where(F.col("cur") != F.col("start"))
                      .select("start", F.col("cur").alias("item")))
    counts = (spark.createDataFrame([], "start long, item long") if not visits else
              _union(visits)).groupBy("start", "item").agg(F.count(F.lit(1)).alias("count"))
    ranked = (counts.repartition(partitions, "start")
              .mapInArrow(_rank(n_items, num_neighbors, window, num_hard), arrow.RANKED_SCHEMA))
    empty = (items.join(ranked.select("node"), "node", "left_anti")
             .select("node", F.array().cast("array<long>").alias("neighbors"),
                     F.array().cast("array<float>").alias("weights"),
                     F.array().cast("array<long>").alias("hard")))
    return ranked.unionByName(empty)


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out
