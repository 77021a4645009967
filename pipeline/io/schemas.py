"""Table schemas, declared once and imported by every writer and reader."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql.types import (ArrayType, DoubleType, FloatType, IntegerType, LongType,
                               StringType, StructField, StructType)

from pipeline.io.kinds import ITEM, USER  # noqa: F401  (re-exported for Spark code)

NODES = StructType([
    StructField("node", LongType(), False),
    StructField("id", StringType(), False),
    StructField("type", StringType(), False),
    # Item features; empty for users and for graphs without features.
    StructField("features", ArrayType(FloatType(), False), False),
])

EDGES = StructType([
    StructField("src", LongType(), False),
    StructField("dst", LongType(), False),
    StructField("weight", FloatType(), False),
    StructField("time", LongType(), True),
])

# Rows that failed validation, kept verbatim (as JSON) with the reason.
QUARANTINE = StructType([
    StructField("file", StringType(), True),
    StructField("column", StringType(), False),
    StructField("reason", StringType(), False),
    StructField("row", StringType(), False),
])


# The evaluation split (stage `split`): one row per held-out interaction.
HOLDOUT = StructType([
    StructField("kind", StringType(), False),      # validation | test
    StructField("user", LongType(), False),        # source node of the held-out edge
    StructField("query", LongType(), False),       # item whose neighbours are retrieved
    StructField("target", LongType(), False),      # item that should be retrieved
    StructField("time", LongType(), True),
])

# Items the trained model never sees under split.protocol=new_items (stage `split`).
NEW_ITEMS = StructType([
    StructField("node", LongType(), False),
])

# Importance neighbourhoods (stage `neighbors`), sorted by weight descending.
NEIGHBORS = StructType([
    StructField("node", LongType(), False),
    StructField("neighbors", ArrayType(LongType(), False), False),
    StructField("weights", ArrayType(FloatType(), False), False),
])

# Each item's ranked hard-negative candidates (stage `neighbors`, beside NEIGHBORS).
HARD_CANDIDATES = StructType([
    StructField("node", LongType(), False),
    StructField("hard", ArrayType(LongType(), False), False),
])

# Training pairs and hard-negative candidates (stage `pairs`).
PAIRS = StructType([
    StructField("query", LongType(), False),
    StructField("positive", LongType(), False),
])
HARD_NEGATIVES = StructType([
    StructField("query", LongType(), False),
    StructField("candidates", ArrayType(LongType(), False), False),
])

# Minibatches (stage `batches`): one row per minibatch, the whole K-layer
# computation graph included. Layer 0 holds the batch's target nodes; layer
# k+1 = layer k followed by the new neighbours of layer k, so a node's own
# index is the same in every deeper layer. query/positive/hard/easy index
# layer 0. easy is the minibatch's pool of easy-negative draws (repeats
# allowed; never one of its queries or positives, never a placeholder), of
# which each epoch uses a subset; hard is empty per query unless the
# curriculum uses hard negatives. nbr_idx[k] is row-major |layer k| x T into
# layer k+1, padded with -1 (the mask) and weight 0.
BATCHES = StructType([
    StructField("batch", LongType(), False),
    StructField("query", ArrayType(IntegerType(), False), False),
    StructField("positive", ArrayType(IntegerType(), False), False),
    StructField("hard", ArrayType(ArrayType(IntegerType(), False), False), False),
    StructField("easy", ArrayType(IntegerType(), False), False),
    StructField("nodes", ArrayType(ArrayType(LongType(), False), False), False),
    StructField("nbr_idx", ArrayType(ArrayType(IntegerType(), False), False), False),
    StructField("nbr_weight", ArrayType(ArrayType(FloatType(), False), False), False),
])

# Per item (stage `batches`, table `item_weights`): how often it is a positive
# of the training minibatches, and its weight when easy negatives are drawn
# ((positives + 1) ^ sample.negative_power; 0 for placeholders). The trainer's
# logQ correction uses both.
ITEM_WEIGHTS = StructType([
    StructField("node", LongType(), False),
    StructField("positives", LongType(), False),
    StructField("weight", DoubleType(), False),
])


# Final item embeddings (stage `embeddings`), L2-normalised; `id` is the
# source's id of the node (ingest's `nodes.id`).
EMBEDDINGS = StructType([
    StructField("node", LongType(), False),
    StructField("id", StringType(), False),
    StructField("embedding", ArrayType(FloatType(), False), False),
    StructField("query", ArrayType(FloatType(), False), False),   # what the item searches with
])

# Rows of the approximate nearest-neighbour index (stage `index`): row i of
# `index.faiss` is item `node` with the source's `id`, searching with `query`.
INDEX_ITEMS = StructType([
    StructField("node", LongType(), False),
    StructField("id", StringType(), False),
    StructField("query", ArrayType(FloatType(), False), False),
])


def conform(df: DataFrame, schema: StructType, name: str) -> DataFrame:
    """Select ``schema``'s columns in order, failing if a name or type differs.

    Nullability is Spark's inference, not a contract, so it is not compared.
    """
    actual = {f.name: f.dataType for f in df.schema.fields}
    problems = []
    for f in schema.fields:
        if f.name not in actual:
            problems.append(f"missing column '{f.name}'")
        elif actual[f.name].simpleString() != f.dataType.simpleString():
            problems.append(f"column '{f.name}' is {actual[f.name].simpleString()}, "
                            f"expected {f.dataType.simpleString()}")
    if problems:
        raise TypeError(f"table '{name}' does not match its schema: " + "; ".join(problems))
    return df.select(*[f.name for f in schema.fields])


def describe(schema: StructType) -> dict[str, str]:
    """Column -> type string, for manifests."""
    return {f.name: f.dataType.simpleString() for f in schema.fields}
