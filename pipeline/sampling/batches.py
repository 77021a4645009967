"""Minibatches with their whole K-layer computation graph, so the trainer does no graph work.

Easy negatives. Each minibatch stores a pool of ``sample.easy_negatives``
draws, with replacement, in proportion to the ``item_weights`` table (an
item's positive count + 1, to the power ``sample.negative_power``: 0 =
uniform, word2vec's 0.75 = flattened popularity). A draw is never one of the
minibatch's own queries or positives, and never an item the training graph
gives no neighbours (weight 0): a removed item's placeholder, or a new item
of ``split.protocol=new_items``, which the model must never meet. The pool's
items are layer-0 nodes, so their computation graph is stored too; each
epoch the loader draws ``train.easy_negatives`` of the pool's slots, keyed
by (seed, epoch, minibatch), and keeps only the part of the graph they need.
A uniform subset of independent draws is itself independent draws, so every
epoch's negatives follow the same distribution.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline.io import schemas
from pipeline.io.arrays import pad_lists
from pipeline.io.kinds import RETIRED_ID
from pipeline.split.protocols import unit_hash
from pipeline.spark import index_rows

SPLITS = ("train", "validation")


def _in_validation(seed: int, val_fraction: float) -> Column:
    return unit_hash(seed + 2, "query", "positive") < val_fraction


def assign(pairs: DataFrame, hard: DataFrame | None, *, seed: int, batch_size: int,
           val_fraction: float) -> dict[str, DataFrame]:
    """Per split, one row per minibatch: its pairs in shuffled order with their candidates.

    ``hard`` None: no hard-negative candidates (the curriculum does not use them).
    """
    p = (pairs.join(hard, "query", "left") if hard is not None
         else pairs.withColumn("candidates", F.lit(None).cast("array<long>")))
    p = (p.withColumn("candidates", F.coalesce("candidates", F.array().cast("array<long>")))
         .withColumn("_val", _in_validation(seed, val_fraction))
         # Repeated pairs are told apart by their copy number, so copies spread over minibatches.
         .withColumn("_copy", F.row_number().over(Window.partitionBy("query", "positive")
                                                  .orderBy("query")))
         .withColumn("_shuffle", F.xxhash64(F.lit(seed), "query", "positive", "_copy")))
    out = {}
    for split in SPLITS:
        part = p.where(F.col("_val") == (split == "validation"))
        part = index_rows(part, "_shuffle", "query", "positive")
        out[split] = (part.groupBy((F.col("_idx") / batch_size).cast("long").alias("batch"))
                      .agg(F.sort_array(F.collect_list(
                          F.struct("_idx", "query", "positive", "candidates"))).alias("pairs")))
    return out


def item_weights(spark: SparkSession, pairs: DataFrame, nodes: DataFrame, neighbors: DataFrame,
                 *, n_items: int, power: float, seed: int, val_fraction: float) -> DataFrame:
    """``schemas.ITEM_WEIGHTS`` for every item: positives in the training minibatches, weight.

    By joins and aggregates, so no table of items reaches the driver. Items
    without neighbours get weight 0, as do placeholders (which have none
    either: no edges). The power runs in NumPy, as it always has, so the
    weights keep their bits.
    """
    counts = (pairs.where(~_in_validation(seed, val_fraction))
              .groupBy(F.col("positive").alias("node")).agg(F.count(F.lit(1)).alias("positives")))
    retired = (nodes.where((F.col("type") == schemas.ITEM) & (F.col("id") == RETIRED_ID))
               .select("node", F.lit(True).alias("_retired")))
    listed = neighbors.where(F.size("neighbors") > 0).select("node", F.lit(True).alias("_listed"))
    rows = (spark.range(0, n_items).select(F.col("id").alias("node"))
            .join(counts, "node", "left").join(retired, "node", "left").join(listed, "node", "left")
            .select("node", F.coalesce("positives", F.lit(0).cast("long")).alias("positives"),
                    (F.col("_retired").isNotNull() | F.col("_listed").isNull()).alias("_zero")))

    def weigh(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            positives = rb.column("positives").to_numpy()
            weight = (positives + 1.0) ** float(power)
            weight[rb.column("_zero").to_numpy(zero_copy_only=False)] = 0.0
            yield pa.RecordBatch.from_arrays([rb.column("node"), rb.column("positives"),
                                              pa.array(weight, pa.float64())],
                                             names=["node", "positives", "weight"])

    return rows.mapInArrow(weigh, schemas.ITEM_WEIGHTS)


def draw_pool(gen: np.random.Generator, weight: np.ndarray, cdf: np.ndarray,
              excluded: np.ndarray, size: int) -> np.ndarray:
    """``size`` draws with replacement in proportion to ``weight``, never one of ``excluded``.

    ``cdf`` is ``cumsum(weight)``; ``excluded`` sorted and distinct. Draws
    from the whole ``cdf`` and rejects excluded items (a binary search per
    draw); when the excluded items hold over half the weight (a minibatch
    covering most of a small catalogue) the restricted cdf is built instead.
    Empty when nothing else has weight.
    """
    total = float(cdf[-1]) if len(cdf) else 0.0
    left = total - float(weight[excluded].sum())
    if size <= 0 or left <= total * 1e-12:
        return np.zeros(0, dtype=np.int64)
    if left < total / 2:
        w = weight.copy()
        w[excluded] = 0.0
        return _invert(np.cumsum(w), gen.random(size))
    out, need = [], size
    while need:
        x = _invert(cdf, gen.random(int(need * total / left * 1.1) + 16))
        if len(excluded):
            at = np.minimum(np.searchsorted(excluded, x), len(excluded) - 1)
            x = x[excluded[at] != x]
        out.append(x[:need])
        need -= len(out[-1])
    return np.concatenate(out)


def _invert(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The items whose cdf interval ``[cdf[i-1], cdf[i])`` holds ``u * total``.

    Zero-weight items have empty intervals, so they are never hit; the value
    is kept below the total, so rounding never runs past the last item.
    """
    v = np.minimum(u * cdf[-1], np.nextafter(cdf[-1], 0.0))
    return np.searchsorted(cdf, v, side="right").astype(np.int64)


def next_layer(cur: np.ndarray, nb: np.ndarray, w: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of a computation graph: layer k's nodes ``cur`` and their padded neighbour
    rows ``nb``/``w`` (``len(cur) x T``) give layer k+1 (``cur`` then the new neighbours,
    so a node keeps its index) and the row-major local indices and weights."""
    valid = nb >= 0
    new = np.setdiff1d(nb[valid], cur)
    nxt = np.concatenate([cur, new])
    order = np.argsort(nxt, kind="stable")
    local = np.full(nb.shape, -1, dtype=np.int32)
    local[valid] = order[np.searchsorted(nxt[order], nb[valid])]
    return nxt, local.ravel(), w.ravel()


def _unique_in_order(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in order of first appearance, and each value's index among them."""
    u, first, inv = np.unique(x, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return u[order], rank[inv.ravel()]


def build(specs: DataFrame, split: str, neighbors: DataFrame, weights_path: str, *,
          num_neighbors: int, num_layers: int, easy_negatives: int, seed: int) -> DataFrame:
    """Rows of ``schemas.BATCHES`` from the per-batch pair lists.

    No task or driver holds the graph: each minibatch's layer k is exploded,
    joined with ``neighbors`` (``schemas.NEIGHBORS``) and grouped back by
    minibatch, and the task that gets the group computes layer k+1 and the
    local indices (:func:`next_layer`). ``weights_path``: the ``item_weights``
    table, which each task reads to draw easy negatives.
    """
    salt = SPLITS.index(split)

    def targets(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        t = ds.dataset(weights_path, format="parquet").to_table(columns=["node", "weight"])
        neg_w = t.sort_by("node").column("weight").to_numpy()
        neg_cdf = np.cumsum(neg_w)
        for rb in batches:
            cols = {k: [] for k in _ARROW_BATCHES.names}
            for batch_id, pairs in zip(rb.column("batch").to_pylist(), rb.column("pairs").to_pylist()):
                q = np.array([p["query"] for p in pairs], dtype=np.int64)
                pos = np.array([p["positive"] for p in pairs], dtype=np.int64)
                cands = [np.array(p["candidates"], dtype=np.int64) for p in pairs]
                gen = np.random.Generator(np.random.Philox(key=[seed, batch_id * 2 + salt]))
                easy = draw_pool(gen, neg_w, neg_cdf, np.unique(np.concatenate([q, pos])),
                                 easy_negatives)
                flat = np.concatenate([q, pos, *cands, easy])
                layer0, local = _unique_in_order(flat)
                n_q = len(q)
                lens = np.cumsum([0] + [len(c) for c in cands])
                hard_local = local[2 * n_q:2 * n_q + lens[-1]]
                cols["batch"].append(batch_id)
                cols["query"].append(local[:n_q].astype(np.int32))
                cols["positive"].append(local[n_q:2 * n_q].astype(np.int32))
                cols["hard"].append([hard_local[lens[i]:lens[i + 1]].astype(np.int32)
                                     for i in range(n_q)])
                cols["easy"].append(local[2 * n_q + lens[-1]:].astype(np.int32))
                cols["nodes"].append([layer0])
                cols["nbr_idx"].append([])
                cols["nbr_weight"].append([])
            yield _record_batch(cols)

    rows = specs.mapInArrow(targets, schemas.BATCHES)
    nb = neighbors.select("node", "neighbors", "weights")
    for _ in range(num_layers):
        rows = rows.persist()   # read twice: exploded for the lookup, and joined back
        lists = (rows.select("batch", F.posexplode(F.element_at("nodes", -1)).alias("pos", "node"))
                 .join(nb, "node", "left")
                 .groupBy("batch").agg(F.collect_list(F.struct("pos", "neighbors", "weights"))
                                       .alias("_lists")))
        rows = rows.join(lists, "batch").mapInArrow(_grow(num_neighbors), schemas.BATCHES)
    return rows


def _grow(num_neighbors: int):
    """The ``mapInArrow`` step that adds each minibatch's next layer from its ``_lists``."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            cols = {k: [] for k in ("nodes", "nbr_idx", "nbr_weight")}
            for i in range(rb.num_rows):
                found = pa.StructArray.from_arrays(rb.column("_lists")[i].values.flatten(),
                                                   names=["pos", "neighbors", "weights"])
                found = found.take(pc.sort_indices(found.field("pos")))
                nb, w = pad_lists(found.field("neighbors"), found.field("weights"), num_neighbors)
                layers = [x.values.to_numpy() for x in rb.column("nodes")[i].values]
                nxt, idx, wts = next_layer(layers[-1], nb, w)
                cols["nodes"].append(layers + [nxt])
                cols["nbr_idx"].append([x.values.to_numpy() for x in rb.column("nbr_idx")[i].values]
                                       + [idx])
                cols["nbr_weight"].append([x.values.to_numpy()
                                           for x in rb.column("nbr_weight")[i].values] + [wts])
            kept = {k: rb.column(k).cast(_ARROW_BATCHES.field(k).type)
                    for k in ("batch", "query", "positive", "hard", "easy")}
            yield _record_batch({**kept, **cols})
    return run


def _record_batch(cols: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [v if isinstance(v, pa.Array) else pa.array(v if k == "batch" else [_pylist(x) for x in v],
                                                     _ARROW_BATCHES.field(k).type)
         for k, v in ((k, cols[k]) for k in _ARROW_BATCHES.names)], schema=_ARROW_BATCHES)


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
