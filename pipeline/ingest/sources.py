"""Reading source graphs into raw Spark DataFrames, before any validation.

Every reader returns a :class:`RawSource`: the edge rows with the user's
columns kept as they were in the file (so a bad row can be shown verbatim),
plus a ``_file`` column naming the file each row came from.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import DataConfig, choices
from pipeline.errors import IngestError
from pipeline.io import versioned

FILE_COL = "_file"
CORRUPT_COL = "_corrupt_record"
FORMATS = choices(DataConfig, "format")


@dataclass
class RawSource:
    edges: DataFrame
    # Columns the user named: role (src/dst/time/weight) -> column name.
    columns: dict[str, str]
    path: str
    # Item features, already numeric: columns ``id`` (string), ``features``
    # (array<double>) and ``_file``; None when the source has none.
    features: DataFrame | None = None
    feature_names: list[str] = field(default_factory=list)
    # How error messages name the features' id and value columns.
    feature_id_col: str = "id"
    feature_col: str = "features"
    # Files whose size and mtime identify this input (for idempotent re-runs).
    files: list[str] = field(default_factory=list)


def _require_path(path: str | None, what: str) -> Path:
    if not path:
        raise IngestError(f"{what} is not set")
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{what}: no such file or directory: {path}")
    if p.is_dir() and not any(q.is_file() and not q.name.startswith(("_", "."))
                              for q in p.rglob("*")):
        raise IngestError(f"{what}: directory has no data files: {path}")
    return p


def _read_csv(spark: SparkSession, path: str, sep: str = ",") -> DataFrame:
    """Read a headed CSV with every column as a string, keeping malformed lines.

    Types are checked by the validator, not guessed by Spark, so that a bad
    value is reported instead of silently becoming null.
    """
    header = spark.read.option("header", True).option("sep", sep).csv(path).columns
    schema = T.StructType([T.StructField(c, T.StringType()) for c in header]
                          + [T.StructField(CORRUPT_COL, T.StringType())])
    df = (spark.read.schema(schema)
          .option("header", True).option("sep", sep)
          .option("mode", "PERMISSIVE")
          .option("columnNameOfCorruptRecord", CORRUPT_COL)
          .csv(path))
    return df.withColumn(FILE_COL, F.input_file_name())


def _read_table(spark: SparkSession, path: str, fmt: str, what: str) -> DataFrame:
    if fmt == "csv":
        return _read_csv(spark, path)
    if fmt == "parquet":
        try:
            versioned.check_parquet(path)
            df = spark.read.parquet(path)
        except Exception as e:  # AnalysisException: corrupt file, not parquet, ...
            raise IngestError(f"{what}: cannot read Parquet at {path}: {str(e).splitlines()[0]}") from e
        return df.withColumn(FILE_COL, F.input_file_name())
    raise IngestError(f"data.format must be one of {', '.join(FORMATS)}, got '{fmt}'")


def _check_columns(df: DataFrame, path: str, wanted: dict[str, str]) -> None:
    present = [c for c in df.columns if c not in (FILE_COL, CORRUPT_COL)]
    for key, col in wanted.items():
        if col not in present:
            raise IngestError(f"{path}: column '{col}' ({key}) not found; "
                              f"the file has columns: {', '.join(present)}")


def _numeric_features(df: DataFrame, id_col: str, path: str) -> tuple[DataFrame, list[str]]:
    """Features as one array<double> column, from a vector column or numeric columns."""
    others = [f for f in df.schema.fields if f.name not in (id_col, FILE_COL)]
    numeric = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType,
               T.DoubleType, T.DecimalType)
    if len(others) == 1 and isinstance(others[0].dataType, T.ArrayType):
        col = others[0]
        if not isinstance(col.dataType.elementType, numeric):
            raise IngestError(f"{path}: column '{col.name}' is {col.dataType.simpleString()}; "
                              f"a feature vector must hold numbers")
        feats = F.col(col.name).cast("array<double>")
        names = [col.name]
    else:
        bad = [f"{f.name} ({f.dataType.simpleString()})" for f in others
               if not isinstance(f.dataType, numeric)]
        if bad:
            raise IngestError(f"{path}: feature columns must be numeric, or one numeric vector "
                              f"column; not numeric: {', '.join(bad)}")
        if not others:
            raise IngestError(f"{path}: no feature columns besides '{id_col}'")
        feats = F.array(*[F.col(f.name).cast("double") for f in others])
        names = [f.name for f in others]
    out = df.select(F.col(id_col).cast("string").alias("id"), feats.alias("features"), FILE_COL)
    return out, names


def read_edges_source(spark: SparkSession, data: DataConfig) -> RawSource:
    """A user's edge list (``data=edges``): CSV or Parquet, file or directory."""
    path = _require_path(data.path, "data.path")
    edges = _read_table(spark, str(path), data.format, "data.path")
    columns = {"data.src_col": data.src_col, "data.dst_col": data.dst_col}
    if data.time_col:
        columns["data.time_col"] = data.time_col
    if data.weight_col:
        columns["data.weight_col"] = data.weight_col
    _check_columns(edges, str(path), columns)
    features, names, files, feature_col = None, [], [str(path)], "features"
    if data.features_path:
        fpath = _require_path(data.features_path, "data.features_path")
        fdf = _read_table(spark, str(fpath), "parquet", "data.features_path")
        _check_columns(fdf, str(fpath), {"data.features_id_col": data.features_id_col})
        features, names = _numeric_features(fdf, data.features_id_col, str(fpath))
        files.append(str(fpath))
        feature_col = names[0] if len(names) == 1 else (
            ", ".join(names) if len(names) <= 4 else f"{names[0]}..{names[-1]}")
    roles = {"src": data.src_col, "dst": data.dst_col, "time": data.time_col,
             "weight": data.weight_col}
    return RawSource(edges=edges, columns={k: v for k, v in roles.items() if v},
                     path=str(path), features=features, feature_names=names, files=files,
                     feature_id_col=data.features_id_col, feature_col=feature_col)


def movielens100k_dir() -> Path:
    """Where the installed recbole package keeps MovieLens-100K (not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise IngestError("MovieLens-100K comes from the recbole package, which is not installed; "
                          "run `make venv` or `pip install --no-deps recbole==1.2.1`")
    root = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (root / "ml-100k.inter").exists():
        raise IngestError(f"recbole is installed but {root}/ml-100k.inter is missing; "
                          f"reinstall with `pip install --no-deps --force-reinstall recbole==1.2.1`")
    return root


def _strip_atomic_types(df: DataFrame) -> DataFrame:
    """RecBole atomic files name columns ``name:type``; keep the name."""
    return df.toDF(*[c.split(":")[0] for c in df.columns])


def read_movielens100k(spark: SparkSession, data: DataConfig) -> RawSource:
    """MovieLens-100K ratings as user -> movie edges with timestamps.

    Movie features: a multi-hot of the 19 genres, the release year
    standardised over the catalogue, and a flag for a missing year.
    """
    root = movielens100k_dir()
    inter = str(root / "ml-100k.inter")
    item = str(root / "ml-100k.item")
    edges = _strip_atomic_types(_read_csv(spark, inter, sep="\t"))
    _check_columns(edges, inter, {"data.src_col": data.src_col, "data.dst_col": data.dst_col,
                                  "data.time_col": data.time_col or "timestamp"})
    items = _strip_atomic_types(
        spark.read.option("header", True).option("sep", "\t").csv(item))
    genres = sorted(r[0] for r in items.select(F.explode(F.split("class", " "))).distinct()
                    .collect() if r[0])
    year = F.col("release_year").try_cast("double")
    stats = items.select(F.mean(year).alias("m"), F.stddev_pop(year).alias("s")).first()
    mean, std = stats["m"] or 0.0, stats["s"] or 1.0
    tokens = F.split("class", " ")
    feats = F.array(*[F.array_contains(tokens, g).cast("double") for g in genres],
                    F.coalesce((year - F.lit(mean)) / F.lit(std), F.lit(0.0)),
                    year.isNull().cast("double"))
    features = items.select(F.col("item_id").alias("id"), feats.alias("features"),
                            F.lit(item).alias(FILE_COL))
    names = [f"genre={g}" for g in genres] + ["year_z", "year_missing"]
    roles = {"src": data.src_col, "dst": data.dst_col, "time": data.time_col,
             "weight": data.weight_col}
    return RawSource(edges=edges, columns={k: v for k, v in roles.items() if v}, path=inter,
                     features=features, feature_names=names, files=[inter, item],
                     feature_id_col="item_id", feature_col="release_year, class")


READERS = {"edges": read_edges_source, "movielens100k": read_movielens100k}


def read_source(spark: SparkSession, data: DataConfig) -> RawSource:
    return READERS[data.source](spark, data)


def item_names(data: DataConfig) -> dict[str, str]:
    """Readable item names by source id, for people reading a report; {} when there are none.

    MovieLens-100K: "title (year)" from its item file. Any other graph:
    ``data.names_path`` (CSV or Parquet) with ``data.names_id_col`` and
    ``data.names_col``.
    """
    if data.source == "movielens100k":
        table = pacsv.read_csv(movielens100k_dir() / "ml-100k.item",
                               parse_options=pacsv.ParseOptions(delimiter="\t"),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                    column_types={
                                                                        "item_id:token": pa.string(),
                                                                        "release_year:token":
                                                                            pa.string()}))
        return {i: f"{t} ({y})" if y else str(t) for i, t, y in zip(
            table.column("item_id:token").to_pylist(), table.column("movie_title:token_seq")
            .to_pylist(), table.column("release_year:token").to_pylist())}
    if not data.names_path:
        return {}
    path = _require_path(data.names_path, "data.names_path")
    table = (pq.read_table(path) if path.suffix == ".parquet" or path.is_dir()
             else pacsv.read_csv(path))
    missing = [c for c in (data.names_id_col, data.names_col) if c not in table.column_names]
    if missing:
        raise IngestError(f"{path}: column '{missing[0]}' (data.names_"
                          f"{'id_col' if missing[0] == data.names_id_col else 'col'}) not found; "
                          f"the file has columns: {', '.join(table.column_names)}")
    ids = table.column(data.names_id_col).cast(pa.string()).to_pylist()
    return dict(zip(ids, map(str, table.column(data.names_col).to_pylist())))
