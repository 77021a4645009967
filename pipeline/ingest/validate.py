"""Row-level validation: find bad rows, say exactly what is wrong, never drop silently.

Each check is a boolean Spark expression naming the column it is about. A row
is tagged with the first check it fails; the tagged rows are then either
reported (``ingest.on_bad_rows=fail``) or moved to the ``quarantine`` table.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline.config import IngestConfig, choices
from pipeline.errors import IngestError
from pipeline.ingest.sources import CORRUPT_COL, FILE_COL, RawSource
from pipeline.io import schemas

REASON = "_reason"
COLUMN = "_column"
ON_BAD_ROWS = choices(IngestConfig, "on_bad_rows")


@dataclass
class Check:
    column: str   # the user's column name, as it appears in the file
    label: str    # the config key that named it, for the message
    reason: str
    bad: Column


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c.cast("string")) == "")


def _not_finite(c: Column) -> Column:
    return F.isnan(c) | (F.abs(c) == F.lit(float("inf")))


def edge_checks(raw: RawSource) -> list[Check]:
    cols = raw.columns
    checks = []
    if CORRUPT_COL in raw.edges.columns:
        checks.append(Check("*", "the file", "malformed line (wrong number of fields)",
                            F.col(CORRUPT_COL).isNotNull()))
    checks += [Check(cols["src"], "data.src_col", "missing id", _blank(F.col(cols["src"]))),
               Check(cols["dst"], "data.dst_col", "missing id", _blank(F.col(cols["dst"])))]
    if "weight" in cols:
        w = F.col(cols["weight"])
        num = w.try_cast("double")
        checks += [Check(cols["weight"], "data.weight_col", "missing value", _blank(w)),
                   Check(cols["weight"], "data.weight_col", "not numeric", num.isNull()),
                   Check(cols["weight"], "data.weight_col", "negative or not finite",
                         _not_finite(num) | (num < 0))]
    if "time" in cols:
        t = F.col(cols["time"])
        num = t.try_cast("double")
        checks.append(Check(cols["time"], "data.time_col", "not numeric",
                            t.isNotNull() & (num.isNull() | _not_finite(num))))
    return checks


def feature_checks(features: DataFrame, id_col: str, feature_col: str
                   ) -> tuple[list[Check], int]:
    """Checks on ``(id, features, _file)`` rows; the expected width is the most common one."""
    width = (features.where(F.col("features").isNotNull())
             .groupBy(F.size("features").alias("w")).count()
             .orderBy(F.desc("count"), F.asc("w")).first())
    expected = int(width["w"]) if width else 0
    dup = F.count(F.lit(1)).over(Window.partitionBy("id")) > 1
    bad_value = F.exists("features", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    label = "data.features_id_col"
    return [
        Check(id_col, label, "missing id", _blank(F.col("id"))),
        Check(feature_col, "", "missing value", F.col("features").isNull()),
        Check(feature_col, "", "NaN or infinite value", bad_value),
        Check(feature_col, "", f"wrong width (expected {expected})",
              F.size("features") != expected),
        Check(id_col, label, "duplicate id", dup),
    ], expected


def tag(df: DataFrame, checks: list[Check]) -> DataFrame:
    """Add ``_column`` and ``_reason`` (null for a good row) from the first failed check."""
    column, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for check in reversed(checks):
        column = F.when(check.bad, F.lit(check.column)).otherwise(column)
        reason = F.when(check.bad, F.lit(check.reason)).otherwise(reason)
    return df.withColumn(COLUMN, column).withColumn(REASON, reason)


def _row_json(df: DataFrame, data_cols: list[str]) -> Column:
    """The row as the user wrote it: JSON of its columns, or the raw line if malformed."""
    parsed = F.to_json(F.struct(*[F.col(c) for c in data_cols]), {"ignoreNullFields": "false"})
    if CORRUPT_COL in df.columns:
        raw = F.to_json(F.struct(F.col(CORRUPT_COL).alias("line")))
        return F.when(F.col(CORRUPT_COL).isNotNull(), raw).otherwise(parsed)
    return parsed


def _file(c: str) -> Column:
    return F.regexp_replace(F.col(c), "^file:(//)?", "")


def summarize(tagged: DataFrame, data_cols: list[str]) -> list[dict]:
    """One entry per (column, reason): count, files involved and an example row."""
    bad = tagged.where(F.col(REASON).isNotNull())
    rows = (bad.groupBy(COLUMN, REASON)
            .agg(F.count(F.lit(1)).alias("count"),
                 F.sort_array(F.collect_set(_file(FILE_COL))).alias("files"),
                 F.min(_row_json(bad, data_cols)).alias("example"))
            .orderBy(COLUMN, REASON).collect())
    return [{"column": r[COLUMN], "reason": r[REASON], "count": int(r["count"]),
             "files": list(r["files"]), "example": r["example"]} for r in rows]


def describe_problems(problems: list[dict], total: int, labels: dict[str, str],
                      what: str) -> str:
    """One line (a job's error is one line): the count and what to do, then each problem
    (files, column, rows, reason and an example row), separated by `` | ``."""
    parts = []
    for p in problems:
        label = labels.get((p["column"], p["reason"]), "")
        files = ", ".join(p["files"][:3]) + (f" (+{len(p['files']) - 3} more)" if len(p["files"]) > 3 else "")
        col = "every column" if p["column"] == "*" else f"column '{p['column']}'{label}"
        parts.append(f"{files}: {col}: {p['count']} of {total} rows: {p['reason']}; "
                     f"e.g. {p['example']}")
    n = sum(p["count"] for p in problems)
    return (f"{what}: {n} bad row{'' if n == 1 else 's'}; "
            f"set ingest.on_bad_rows=quarantine to move them to the quarantine table instead: "
            + " | ".join(parts))


def split(df: DataFrame, checks: list[Check], data_cols: list[str], *, total: int,
          on_bad_rows: str, what: str) -> tuple[DataFrame, DataFrame, list[dict]]:
    """Good rows, quarantined rows (``schemas.QUARANTINE``) and the problem summary.

    Raises :class:`IngestError` listing every problem when ``on_bad_rows=fail``.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise IngestError(f"ingest.on_bad_rows must be one of {', '.join(ON_BAD_ROWS)}, "
                          f"got '{on_bad_rows}'")
    tagged = tag(df, checks).persist()
    problems = summarize(tagged, data_cols)
    if problems and on_bad_rows == "fail":
        labels = {(c.column, c.reason): f" ({c.label})" if c.label.startswith("data.") else ""
                  for c in checks}
        tagged.unpersist()
        raise IngestError(describe_problems(problems, total, labels, what))
    good = tagged.where(F.col(REASON).isNull()).drop(REASON, COLUMN)
    bad = tagged.where(F.col(REASON).isNotNull())
    quarantine = bad.select(_file(FILE_COL).alias("file"), F.col(COLUMN).alias("column"),
                            F.col(REASON).alias("reason"),
                            _row_json(bad, data_cols).alias("row"))
    return good, schemas.conform(quarantine, schemas.QUARANTINE, "quarantine"), problems
