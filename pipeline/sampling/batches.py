"""Minibatches with their whole K-layer computation graph, so the trainer does no graph work."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.io import schemas
from pipeline.sampling.split import unit_hash
from pipeline.spark import index_rows

SPLITS = ("train", "validation")


def assign(pairs: DataFrame, hard: DataFrame, *, seed: int, batch_size: int,
           val_fraction: float) -> dict[str, DataFrame]:
    """Per split, one row per minibatch: its pairs in shuffled order with their candidates."""
    p = (pairs.join(hard, "query", "left")
         .withColumn("candidates", F.coalesce("candidates", F.array().cast("array<long>")))
         .withColumn("_val", unit_hash(seed + 2, "query", "positive") < val_fraction)
         .withColumn("_shuffle", F.xxhash64(F.lit(seed), "query", "positive")))
    out = {}
    for split in SPLITS:
        part = p.where(F.col("_val") == (split == "validation"))
        part = index_rows(part, "_shuffle", "query", "positive")
        out[split] = (part.groupBy((F.col("_idx") / batch_size).cast("long").alias("batch"))
                      .agg(F.sort_array(F.collect_list(
                          F.struct("_idx", "query", "positive", "candidates"))).alias("pairs")))
    return out


def computation_graph(targets: np.ndarray, nbr: np.ndarray, w: np.ndarray, num_layers: int):
    """Layers of node ids and, per layer, padded local neighbour indices and weights."""
    layers, idx, wts = [targets], [], []
    for _ in range(num_layers):
        cur = layers[-1]
        nb = nbr[cur]
        valid = nb >= 0
        new = np.setdiff1d(nb[valid], cur)
        nxt = np.concatenate([cur, new])
        order = np.argsort(nxt, kind="stable")
        local = np.full(nb.shape, -1, dtype=np.int32)
        local[valid] = order[np.searchsorted(nxt[order], nb[valid])]
        layers.append(nxt)
        idx.append(local.ravel())
        wts.append(w[cur].ravel())
    return layers, idx, wts


def _unique_in_order(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in order of first appearance, and each value's index among them."""
    u, first, inv = np.unique(x, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return u[order], rank[inv.ravel()]


def build(spark: SparkSession, specs: DataFrame, split: str, nbr: np.ndarray, w: np.ndarray, *,
          num_layers: int, easy_negatives: int, seed: int) -> DataFrame:
    """Rows of ``schemas.BATCHES`` from the per-batch pair lists."""
    shared = spark.sparkContext.broadcast((nbr, w))
    n_items = nbr.shape[0]
    salt = SPLITS.index(split)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nb, wt = shared.value
        for rb in batches:
            cols = {k: [] for k in ("batch", "query", "positive", "hard", "easy",
                                    "nodes", "nbr_idx", "nbr_weight")}
            for batch_id, pairs in zip(rb.column("batch").to_pylist(), rb.column("pairs").to_pylist()):
                q = np.array([p["query"] for p in pairs], dtype=np.int64)
                pos = np.array([p["positive"] for p in pairs], dtype=np.int64)
                cands = [np.array(p["candidates"], dtype=np.int64) for p in pairs]
                gen = np.random.Generator(np.random.Philox(key=[seed, batch_id * 2 + salt]))
                easy = gen.choice(n_items, size=min(easy_negatives, n_items), replace=False)
                flat = np.concatenate([q, pos, *cands, easy]) if cands else np.concatenate([q, pos, easy])
                targets, local = _unique_in_order(flat)
                n_q = len(q)
                lens = np.cumsum([0] + [len(c) for c in cands])
                hard_local = local[2 * n_q:2 * n_q + lens[-1]]
                layers, idx, wts = computation_graph(targets, nb, wt, num_layers)
                cols["batch"].append(batch_id)
                cols["query"].append(local[:n_q].astype(np.int32))
                cols["positive"].append(local[n_q:2 * n_q].astype(np.int32))
                cols["hard"].append([hard_local[lens[i]:lens[i + 1]].astype(np.int32)
                                     for i in range(n_q)])
                cols["easy"].append(local[2 * n_q + lens[-1]:].astype(np.int32))
                cols["nodes"].append(layers)
                cols["nbr_idx"].append(idx)
                cols["nbr_weight"].append(wts)
            yield pa.RecordBatch.from_pydict(
                {k: (v if k == "batch" else [_pylist(x) for x in v]) for k, v in cols.items()},
                schema=_ARROW_BATCHES)

    return specs.mapInArrow(run, schemas.BATCHES)


def _pylist(x):
    if isinstance(x, np.ndarray):
        return x
    return [_pylist(y) for y in x]


_ARROW_BATCHES = pa.schema([
    ("batch", pa.int64()),
    ("query", pa.list_(pa.int32())),
    ("positive", pa.list_(pa.int32())),
    ("hard", pa.list_(pa.list_(pa.int32()))),
    ("easy", pa.list_(pa.int32())),
    ("nodes", pa.list_(pa.list_(pa.int64()))),
    ("nbr_idx", pa.list_(pa.list_(pa.int32()))),
    ("nbr_weight", pa.list_(pa.list_(pa.float32()))),
])
