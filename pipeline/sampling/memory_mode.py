"""``sample.mode=memory``: the graph as integer-weighted CSR arrays broadcast to every executor.

Each partition of start items propagates its mass vectorised (SciPy sparse
products, :func:`pipeline.sampling.ppr.propagate`) inside ``mapInArrow``, so
the work scales with the cores Spark has.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.sampling import arrow, ppr


def load_transitions(edges_path: str, n_nodes: int, n_items: int, bipartite: bool) -> ppr.Transitions:
    """Read the training edges with pyarrow (no Spark round trip) into integer-weighted CSR arrays."""
    table = ds.dataset(edges_path, format="parquet").to_table(columns=["src", "dst", "weight"])
    return ppr.transitions(arrow.column(table, "src"), arrow.column(table, "dst"),
                           arrow.column(table, "weight", np.float64), n_nodes, n_items, bipartite)


def sample(spark: SparkSession, t: ppr.Transitions, *, walk_length: int, restart_prob: float,
           push_threshold: float, degree_exponent: float, seed: int, num_neighbors: int,
           window: tuple[int, int], num_hard: int, partitions: int,
           starts: DataFrame | None = None) -> DataFrame:
    """Rows of ``arrow.RANKED_SCHEMA`` for every item ``0 .. n_items-1`` (or the ``node``s of ``starts``)."""
    shared = spark.sparkContext.broadcast(t)
    kw = dict(walk_length=walk_length, restart_prob=restart_prob, push_threshold=push_threshold,
              degree_exponent=degree_exponent, seed=seed, num_neighbors=num_neighbors,
              window=window, num_hard=num_hard)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        g = shared.value
        for batch in batches:
            for chunk, ranked, pushes in ppr.neighborhoods(g, arrow.column(batch, "id"), **kw):
                yield arrow.ranked_batch(chunk, ranked, pushes)

    ids = (spread(spark, t.n_items, partitions) if starts is None else
           starts.select(F.col("node").alias("id")).repartition(partitions))
    return ids.mapInArrow(run, arrow.RANKED_SCHEMA)


def spread(spark: SparkSession, n: int, partitions: int) -> DataFrame:
    """``(id)``: every item ``0 .. n-1`` once, in :func:`pipeline.sampling.ppr.spread_order`,
    cut into ``partitions`` contiguous runs: each partition a sample spread over the ids.
    (The tables are written sorted by node, so this changes no output byte.)"""
    stride = ppr.spread_stride(n)
    return spark.range(0, n, numPartitions=partitions).select(
        F.pmod(F.col("id") * F.lit(stride), F.lit(n)).alias("id"))
