"""Turning validated edge rows into the ``nodes`` and ``edges`` tables."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.io import schemas
from pipeline.io.kinds import RETIRED_ID
from pipeline.spark import index_rows


def _order(df: DataFrame) -> tuple:
    """Items first; within a type, integer-looking ids numerically, then strings."""
    return (F.asc(F.when(F.col("type") == schemas.ITEM, 0).otherwise(1)),
            F.asc_nulls_last(F.col("id").try_cast("long")), F.asc("id"))


def assign_ids(ids: DataFrame, previous: DataFrame | None = None) -> DataFrame:
    """Node numbers for ``(id, type)`` rows: stable across versions, items in ``0..n_items-1``.

    Without ``previous`` (the first version of a run): items first, then
    users; within a type, integer-looking ids in numeric order, then the rest
    as strings. The numbering is a global sort plus per-partition offsets, all
    in the JVM, so it scales past what one machine could collect.

    With ``previous`` (the ``nodes`` of the last published version) the map is
    carried over: a node's *slot* (its number within its type) never changes
    and is never reused; new ids get the next slots, in the order above;
    removed ids leave a placeholder row (id ``RETIRED_ID``, no edges, zero
    features) so the item range stays dense, which the feature store, the
    model's ID embeddings and every ``n_items``-sized array rely on. Items are
    numbered by slot; users by ``item slots + slot``, so a user's number moves
    only by the number of items added (no artefact refers to users across
    versions; items' numbers are what the model, neighbourhoods, embeddings
    and the index keep).
    """
    if previous is None:
        return index_rows(ids.select("id", "type"), *_order(ids), name="node").select(
            "node", "id", "type")
    n_prev_items = previous.where(F.col("type") == schemas.ITEM).count()
    prev = previous.select("id", "type", (F.col("node") - F.when(
        F.col("type") == schemas.ITEM, 0).otherwise(n_prev_items)).alias("slot"))
    live = prev.where(F.col("id") != RETIRED_ID)
    carried = ids.join(live, ["id", "type"], "inner")
    retired = (prev.where(F.col("id") == RETIRED_ID)
               .unionByName(live.join(ids, ["id", "type"], "left_anti"))
               .withColumn("id", F.lit(RETIRED_ID)))
    next_slot = {r["type"]: int(r["n"]) for r in
                 prev.groupBy("type").agg((F.max("slot") + 1).alias("n")).collect()}
    fresh = ids.join(live, ["id", "type"], "left_anti").select("id", "type")
    fresh = index_rows(fresh, *_order(fresh), name="_rank")
    n_new_items = fresh.where(F.col("type") == schemas.ITEM).count()
    fresh = fresh.select("id", "type", F.when(
        F.col("type") == schemas.ITEM, F.col("_rank") + next_slot.get(schemas.ITEM, 0))
        .otherwise(F.col("_rank") - n_new_items + next_slot.get(schemas.USER, 0)).alias("slot"))
    n_items = next_slot.get(schemas.ITEM, 0) + n_new_items
    slots = carried.select("id", "type", "slot").unionByName(retired).unionByName(fresh)
    return slots.select(
        (F.col("slot") + F.when(F.col("type") == schemas.ITEM, 0).otherwise(n_items)).alias("node"),
        "id", "type")


def build_edges(good: DataFrame, roles: dict[str, str], bipartite: bool,
                previous: DataFrame | None = None
                ) -> tuple[DataFrame, DataFrame, dict[str, int]]:
    """Map ids to nodes, drop self-loops, merge duplicates (sum weights, latest time).

    ``good`` holds validated rows with the user's column names in ``roles``;
    ``previous`` is the last version's ``nodes``, whose numbers are kept
    (see :func:`assign_ids`). Returns ``(nodes without features, edges, counts)``.
    """
    src_type = F.lit(schemas.USER if bipartite else schemas.ITEM)
    weight = (F.col(roles["weight"]).try_cast("double") if "weight" in roles else F.lit(1.0))
    time = (F.floor(F.col(roles["time"]).try_cast("double")).cast("long") if "time" in roles
            else F.lit(None).cast("long"))
    rows = good.select(F.trim(F.col(roles["src"]).cast("string")).alias("src_id"),
                       F.trim(F.col(roles["dst"]).cast("string")).alias("dst_id"),
                       weight.alias("weight"), time.alias("time")).persist()
    ids = (rows.select(F.col("src_id").alias("id"), src_type.alias("type"))
           .union(rows.select(F.col("dst_id").alias("id"), F.lit(schemas.ITEM).alias("type")))
           .distinct())
    nodes = assign_ids(ids, previous).persist()
    src_map = nodes.select(F.col("id").alias("src_id"), F.col("type").alias("_st"),
                           F.col("node").alias("src"))
    dst_map = nodes.where(F.col("type") == schemas.ITEM).select(
        F.col("id").alias("dst_id"), F.col("node").alias("dst"))
    mapped = (rows.join(src_map.where(F.col("_st") == src_type), "src_id")
              .join(dst_map, "dst_id")
              .select("src", "dst", "weight", "time"))
    self_loops = mapped.where(F.col("src") == F.col("dst")).count() if not bipartite else 0
    kept = mapped.where(F.col("src") != F.col("dst")) if not bipartite else mapped
    edges = (kept.groupBy("src", "dst")
             .agg(F.sum("weight").cast("float").alias("weight"),
                  F.max("time").alias("time"),
                  F.count(F.lit(1)).alias("_n"))
             .persist())
    stats = edges.agg(F.count(F.lit(1)).alias("out"), F.sum("_n").alias("merged_from")).first()
    edges_out = int(stats["out"])
    counts = {
        "self_loops_dropped": int(self_loops),
        "duplicate_edges_merged": int(stats["merged_from"] or 0) - edges_out,
        "edges_out": edges_out,
    }
    edges = schemas.conform(edges.drop("_n").orderBy("src", "dst"), schemas.EDGES, "edges")
    return nodes, edges, counts


def attach_features(nodes: DataFrame, features: DataFrame | None, dim: int
                    ) -> tuple[DataFrame, dict[str, int]]:
    """Join item features by id; items without a feature row get zeros, users get ``[]``."""
    empty = F.array().cast("array<float>")
    if features is None:
        out = nodes.withColumn("features", empty)
        return schemas.conform(out.orderBy("node"), schemas.NODES, "nodes"), {}
    feats = features.select("id", F.col("features").cast("array<float>").alias("_f"),
                            F.lit(True).alias("_matched"))
    items = nodes.where(F.col("type") == schemas.ITEM)
    joined = nodes.join(feats, "id", "left")
    zeros = F.array_repeat(F.lit(0.0).cast("float"), dim)
    out = joined.select(
        "node", "id", "type",
        F.when(F.col("type") != schemas.ITEM, empty)
         .otherwise(F.coalesce(F.col("_f"), zeros)).alias("features"))
    item_ids = items.select("id", F.lit(True).alias("_item"))
    counts = {
        "items_without_features": joined.where((F.col("type") == schemas.ITEM)
                                               & (F.col("id") != RETIRED_ID)
                                               & F.col("_matched").isNull()).count(),
        "feature_rows_unmatched": feats.join(item_ids, "id", "left")
                                       .where(F.col("_item").isNull()).count(),
    }
    return schemas.conform(out.orderBy("node"), schemas.NODES, "nodes"), counts
