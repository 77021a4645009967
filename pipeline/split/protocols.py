"""The evaluation split, made before any sampling so held-out edges never leak.

``leave_last_out`` (needs times): per user (the source node), the last
interaction is test and the one before validation; the query is the user's
last remaining item. On an item-item graph the source node is the query.
``random_edges``: a seeded fraction of edges is held out (half validation,
half test); the query is the source on an item-item graph, or on a bipartite
graph a remaining item of the same user, chosen by hash.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline.errors import PipelineError
from pipeline.io import schemas

PROTOCOLS = ("leave_last_out", "random_edges")


def unit_hash(seed: int, *cols: str) -> F.Column:
    """Deterministic uniform in [0, 1) from column values; independent of partitioning."""
    h = F.xxhash64(F.lit(seed), *[F.col(c) for c in cols])
    return F.pmod(h, F.lit(1 << 30)).cast("double") / float(1 << 30)


def split_edges(edges: DataFrame, protocol: str, bipartite: bool, seed: int,
                holdout_fraction: float) -> tuple[DataFrame, DataFrame]:
    """``(train edges, holdout)``; holdout rows follow ``schemas.HOLDOUT``."""
    if protocol == "leave_last_out":
        train, held = _leave_last_out(edges, bipartite)
    elif protocol == "random_edges":
        if not 0 < holdout_fraction < 1:
            raise PipelineError(f"split.holdout_fraction must be in (0, 1), got {holdout_fraction}")
        train, held = _random_edges(edges, bipartite, seed, holdout_fraction)
    else:
        raise PipelineError(f"split.protocol must be one of {', '.join(PROTOCOLS)}, "
                            f"got '{protocol}'")
    return (schemas.conform(train, schemas.EDGES, "train_edges"),
            schemas.conform(held, schemas.HOLDOUT, "holdout"))


def _leave_last_out(edges: DataFrame, bipartite: bool) -> tuple[DataFrame, DataFrame]:
    missing = edges.where(F.col("time").isNull()).limit(1).count()
    if missing:
        raise PipelineError("split.protocol=leave_last_out needs edge times: ingest with "
                            "data.time_col set, or use split.protocol=random_edges")
    by_user = Window.partitionBy("src").orderBy(F.desc("time"), F.desc("dst"))
    ranked = (edges.withColumn("_rank", F.row_number().over(by_user))
              .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("src"))))
    # Users with fewer than 3 interactions keep them all for training.
    eligible = F.col("_n") >= 3
    held = ranked.where(eligible & (F.col("_rank") <= 2))
    train = ranked.where(~eligible | (F.col("_rank") > 2)).drop("_rank", "_n")
    if bipartite:
        last = ranked.where(eligible & (F.col("_rank") == 3)).select("src", F.col("dst").alias("query"))
        held = held.join(last, "src")
    else:
        held = held.withColumn("query", F.col("src"))
    held = held.select(F.when(F.col("_rank") == 1, "test").otherwise("validation").alias("kind"),
                       F.col("src").alias("user"), "query", F.col("dst").alias("target"), "time")
    return train, held


def _random_edges(edges: DataFrame, bipartite: bool, seed: int, fraction: float
                  ) -> tuple[DataFrame, DataFrame]:
    u = unit_hash(seed, "src", "dst")
    tagged = edges.withColumn("_u", u).withColumn("_out", F.col("_u") < fraction)
    if bipartite:
        # A user must keep one training item to serve as the query.
        kept = tagged.groupBy("src").agg(F.sum((~F.col("_out")).cast("int")).alias("_kept"))
        tagged = (tagged.join(kept, "src")
                  .withColumn("_out", F.col("_out") & (F.col("_kept") > 0)).drop("_kept"))
    train = tagged.where(~F.col("_out")).drop("_u", "_out")
    held = tagged.where(F.col("_out"))
    kind = F.when(F.col("_u") < fraction / 2, "validation").otherwise("test")
    if bipartite:
        pick = (train.withColumn("_h", unit_hash(seed + 1, "src", "dst"))
                .withColumn("_r", F.row_number().over(
                    Window.partitionBy("src").orderBy("_h", "dst")))
                .where(F.col("_r") == 1).select("src", F.col("dst").alias("query")))
        held = held.join(pick, "src")
    else:
        held = held.withColumn("query", F.col("src"))
    held = held.select(kind.alias("kind"), F.col("src").alias("user"), "query",
                       F.col("dst").alias("target"), "time")
    return train, held
