"""Positive pairs from co-engagement, and hard-negative candidates from the walks."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline.io import schemas


def consecutive_pairs(train_edges: DataFrame, window: int, *, has_time: bool,
                      seed: int) -> DataFrame:
    """(earlier item, later item) for items a user engaged with within ``window`` steps.

    Without times a user's items are put in a seeded random order, so a
    basket's items pair up as a session's do, with no order invented from ids.
    """
    order = (["time", "dst"] if has_time
             else [F.xxhash64(F.lit(seed), F.col("src"), F.col("dst")), "dst"])
    by_user = Window.partitionBy("src").orderBy(*order)
    frames = [train_edges.select(F.col("dst").alias("query"),
                                 F.lead("dst", d).over(by_user).alias("positive"))
              for d in range(1, window + 1)]
    pairs = frames[0]
    for f in frames[1:]:
        pairs = pairs.unionByName(f)
    return pairs.where(F.col("positive").isNotNull() & (F.col("query") != F.col("positive")))


def edge_pairs(train_edges: DataFrame) -> DataFrame:
    """An item-item graph's training edges, source as query: what its held-out edges ask."""
    return train_edges.select(F.col("src").alias("query"), F.col("dst").alias("positive")
                              ).where(F.col("query") != F.col("positive"))


def build_pairs(train_edges: DataFrame, *, bipartite: bool, has_time: bool, window: int,
                seed: int, repeat: bool) -> tuple[DataFrame, str]:
    """Training pairs and how they were made: the co-engagements evaluation holds out.

    ``repeat``: a pair co-engaged by n users stays n rows, so the model sees
    how often two items go together (each co-engagement is one observation,
    as word2vec counts each co-occurrence); otherwise pairs are distinct.
    """
    if bipartite:
        pairs = consecutive_pairs(train_edges, window, has_time=has_time, seed=seed)
        how = (f"items of a user within {window} of each other, "
               + ("in time order" if has_time else "in a seeded random order"))
    else:
        pairs, how = edge_pairs(train_edges), "the training edges (source as query)"
    if repeat:
        how += ", one row per co-engagement"
    else:
        pairs = pairs.distinct()
    return schemas.conform(pairs, schemas.PAIRS, "pairs"), how


def hard_negatives(pairs: DataFrame, ranked: DataFrame) -> DataFrame:
    """Each query's candidates from its walk-rank window, minus its positives, in rank order."""
    positives = pairs.groupBy("query").agg(F.collect_set("positive").alias("_pos"))
    out = (positives.join(ranked.select(F.col("node").alias("query"), "hard"), "query")
           .select("query", F.array_except("hard", "_pos").alias("candidates")))
    return schemas.conform(out, schemas.HARD_NEGATIVES, "hard_negatives")
