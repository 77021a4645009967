"""Positive pairs from co-engagement, and hard-negative candidates from the walks."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline.io import schemas


def consecutive_pairs(train_edges: DataFrame, window: int) -> DataFrame:
    """(earlier item, later item) for items a user engaged with within ``window`` steps."""
    by_user = Window.partitionBy("src").orderBy("time", "dst")
    frames = [train_edges.select(F.col("dst").alias("query"),
                                 F.lead("dst", d).over(by_user).alias("positive"))
              for d in range(1, window + 1)]
    pairs = frames[0]
    for f in frames[1:]:
        pairs = pairs.unionByName(f)
    return pairs.where(F.col("positive").isNotNull() & (F.col("query") != F.col("positive")))


def walk_pairs(ranked: DataFrame, per_item: int) -> DataFrame:
    """(item, one of its ``per_item`` most visited items): co-occurrence in walks."""
    return ranked.select(F.col("node").alias("query"),
                         F.explode(F.slice("neighbors", 1, per_item)).alias("positive"))


def build_pairs(train_edges: DataFrame, ranked: DataFrame, *, bipartite: bool, has_time: bool,
                window: int, per_item: int) -> tuple[DataFrame, str]:
    """Distinct training pairs and how they were made."""
    if bipartite and has_time:
        pairs, how = consecutive_pairs(train_edges, window), f"consecutive items within {window}"
    else:
        pairs, how = walk_pairs(ranked, per_item), f"top {per_item} walk co-occurrences"
    return schemas.conform(pairs.distinct(), schemas.PAIRS, "pairs"), how


def hard_negatives(pairs: DataFrame, ranked: DataFrame) -> DataFrame:
    """Each query's candidates from its walk-rank window, minus its positives, in rank order."""
    positives = pairs.groupBy("query").agg(F.collect_set("positive").alias("_pos"))
    out = (positives.join(ranked.select(F.col("node").alias("query"), "hard"), "query")
           .select("query", F.array_except("hard", "_pos").alias("candidates")))
    return schemas.conform(out, schemas.HARD_NEGATIVES, "hard_negatives")
