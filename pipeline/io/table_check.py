"""Schema checks of a published version's tables, before a stage reads them.

:func:`pipeline.io.versioned.check_version` calls :func:`check_tables` after
the header/footer check, so every stage's input boundary (graph, split,
neighbors, pairs, batches, embeddings, index) refuses a table whose Parquet
schema is not the one declared in :mod:`pipeline.io.schemas`, naming the file,
the column, the expected and the found type, instead of failing later inside
Spark, the loader or the model with a type error (or silently casting).

Only the footers are read (``pq.read_schema``), one per file: cheap next to
reading the data. Names and types are compared the way
:func:`pipeline.io.schemas.conform` does (Spark's type names, nullability
ignored); extra columns are allowed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.types import StructType

from pipeline.io import schemas
from pipeline.errors import CorruptFile

# Stage -> table -> (declared schema, its name in pipeline.io.schemas).
DECLARED: dict[str, dict[str, tuple[StructType, str]]] = {
    "graph": {"nodes": (schemas.NODES, "NODES"), "edges": (schemas.EDGES, "EDGES"),
              "quarantine": (schemas.QUARANTINE, "QUARANTINE")},
    "split": {"train_edges": (schemas.EDGES, "EDGES"), "holdout": (schemas.HOLDOUT, "HOLDOUT"),
              "new_items": (schemas.NEW_ITEMS, "NEW_ITEMS")},
    "neighbors": {"neighbors": (schemas.NEIGHBORS, "NEIGHBORS"),
                  "hard_candidates": (schemas.HARD_CANDIDATES, "HARD_CANDIDATES")},
    "pairs": {"pairs": (schemas.PAIRS, "PAIRS"),
              "hard_negatives": (schemas.HARD_NEGATIVES, "HARD_NEGATIVES")},
    "batches": {"train": (schemas.BATCHES, "BATCHES"), "validation": (schemas.BATCHES, "BATCHES"),
                "item_weights": (schemas.ITEM_WEIGHTS, "ITEM_WEIGHTS")},
    "embeddings": {"embeddings": (schemas.EMBEDDINGS, "EMBEDDINGS")},
    "index": {"items": (schemas.INDEX_ITEMS, "INDEX_ITEMS")},
}


class SchemaMismatch(CorruptFile):
    """A table of a published version does not have its declared schema."""


def spark_type(t: pa.DataType) -> str:
    """Spark's ``simpleString`` of the type Spark reads an Arrow/Parquet type as."""
    simple = {pa.int64(): "bigint", pa.int32(): "int", pa.int16(): "smallint",
              pa.int8(): "tinyint", pa.float32(): "float", pa.float64(): "double",
              pa.bool_(): "boolean", pa.string(): "string", pa.large_string(): "string",
              pa.binary(): "binary", pa.large_binary(): "binary", pa.date32(): "date"}
    if t in simple:
        return simple[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"array<{spark_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{t.field(i).name}:{spark_type(t.field(i).type)}"
                                    for i in range(t.num_fields)) + ">"
    if pa.types.is_map(t):
        return f"map<{spark_type(t.key_type)},{spark_type(t.item_type)}>"
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz else "timestamp_ntz"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    return str(t)


def _files(table_dir: Path) -> list[Path]:
    return sorted(p for p in table_dir.rglob("*.parquet")
                  if p.is_file() and not p.name.startswith((".", "_")))


def _expected(stage: str, path: Path, manifest: str) -> dict[str, tuple[dict[str, str], str]]:
    """Table -> (column -> type, where it is declared) for the tables this version holds.

    The tables of :data:`DECLARED` present in the version, and any other the
    manifest's ``schema`` names (checked against the manifest's types).
    """
    out = {table: ({f.name: f.dataType.simpleString() for f in schema.fields},
                   f"pipeline.io.schemas.{name}")
           for table, (schema, name) in DECLARED.get(stage, {}).items()
           if (path / table).is_dir()}
    try:
        recorded = json.loads((path / manifest).read_text()).get("schema") or {}
    except (OSError, ValueError):
        recorded = {}
    for table, columns in recorded.items():
        if table not in out and isinstance(columns, dict):
            out[table] = (dict(columns), f"{stage}/{path.name}/{manifest}")
    return out


def check_tables(path: str | os.PathLike, stage: str, *, manifest: str = "manifest.json",
                 producer: str | None = None) -> int:
    """Fail with :class:`SchemaMismatch` at the first table file whose schema is not declared's.

    ``path`` is a complete version of ``stage`` (its manifest file named ``manifest``;
    ``producer``: the job that rebuilds it). Returns the number of files checked.
    """
    path = Path(path)
    todo = f"rebuild it: python {producer or 'jobs/pipeline.py'} force=true"
    checked = 0
    for table, (columns, where) in sorted(_expected(stage, path, manifest).items()):
        table_dir = path / table
        if not table_dir.is_dir():
            raise SchemaMismatch(f"{stage}/{path.name}: table '{table}' is missing "
                                 f"(declared in {where}); {todo}")
        for f in _files(table_dir):
            try:
                found = {field.name: spark_type(field.type) for field in pq.read_schema(f)}
            except (OSError, pa.ArrowException) as e:
                raise CorruptFile(f"{stage}/{path.name}: {f} cannot be read as Parquet "
                                  f"({str(e)[:200]}); {todo}") from None
            checked += 1
            for column, expected in columns.items():
                got = found.get(column)
                if got != expected:
                    what = "is missing" if got is None else f"is {got}"
                    raise SchemaMismatch(f"{stage}/{path.name}: {f}: column '{column}' {what}, "
                                         f"expected {expected} ({where}); {todo}")
    return checked
