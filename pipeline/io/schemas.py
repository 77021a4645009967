"""Table schemas, declared once and imported by every writer and reader."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql.types import (ArrayType, FloatType, LongType, StringType, StructField,
                               StructType)

# Node types. In a bipartite graph users/boards and items are separate id
# namespaces; only items get embeddings.
ITEM = "item"
USER = "user"

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
