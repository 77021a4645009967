"""``sample.mode=memory``: the graph as CSR arrays broadcast to every executor.

Each partition of start items walks vectorised with NumPy inside
``mapInArrow``, so the work runs near the speed of random memory access and
scales with the cores Spark has.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.sampling import arrow, walks

# Walkers per vectorised chunk: bounds executor memory at ~100 MB per task.
CHUNK_WALKERS = 1 << 20


def load_csr(edges_path: str, n_nodes: int, n_items: int, bipartite: bool) -> walks.CSR:
    """Read the training edges with pyarrow (no Spark round trip) into a CSR."""
    table = ds.dataset(edges_path, format="parquet").to_table(columns=["src", "dst", "weight"])
    return walks.build_csr(arrow.column(table, "src"), arrow.column(table, "dst"),
                           arrow.column(table, "weight", np.float64), n_nodes, n_items, bipartite)


def sample(spark: SparkSession, csr: walks.CSR, *, num_walks: int, walk_length: int,
           restart_prob: float, seed: int, num_neighbors: int, window: tuple[int, int],
           num_hard: int, partitions: int, starts: DataFrame | None = None) -> DataFrame:
    """Rows of ``arrow.RANKED_SCHEMA`` for every item ``0 .. n_items-1`` (or the ``node``s of ``starts``)."""
    shared = spark.sparkContext.broadcast(csr)
    per_chunk = max(1, CHUNK_WALKERS // max(1, num_walks))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        g = shared.value
        for batch in batches:
            nodes = arrow.column(batch, "id")
            for lo in range(0, len(nodes), per_chunk):
                chunk = nodes[lo:lo + per_chunk]
                owner, visited = walks.walk(g, chunk, num_walks, walk_length, restart_prob, seed)
                o, item, count = walks.count_visits(owner, visited, g.n_items)
                ranked = walks.rank_visits(len(chunk), o, item, count, num_neighbors, window, num_hard)
                yield arrow.ranked_batch(chunk, ranked)

    ids = (spark.range(0, csr.n_items, numPartitions=partitions) if starts is None else
           starts.select(F.col("node").alias("id")).repartition(partitions))
    return ids.mapInArrow(run, arrow.RANKED_SCHEMA)
