"""Schema checks at every stage's input boundary: a table with a wrong column type is refused
with one line naming the file, the column, both types and what to do; nothing is published."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql.pandas.types import to_arrow_schema

from pipeline.io import versioned
from pipeline.io.table_check import DECLARED, SchemaMismatch, check_tables, spark_type

ROOT = Path(__file__).resolve().parent.parent
# What the JVM itself prints on stderr at start-up (not the job's).
JVM_NOTICES = ("NOTE: Picked up JDK_JAVA_OPTIONS", "WARNING: Using incubator modules")
CASES = [(stage, table) for stage, tables in DECLARED.items() for table in tables]


def _publish(run_dir, stage: str, tables: dict[str, pa.Table]) -> str:
    with versioned.publish(run_dir, stage, "s" * 64) as out:
        for name, t in tables.items():
            os.makedirs(out.table_path(name))
            pq.write_table(t, os.path.join(out.table_path(name), "part-00000.parquet"))
    return out.version


def _empty(stage: str, table: str) -> pa.Table:
    return to_arrow_schema(DECLARED[stage][table][0]).empty_table()


@pytest.mark.parametrize("stage,table", CASES)
def test_each_stage_table_with_a_wrong_column_type_is_refused(tmp_path, stage, table):
    version = _publish(tmp_path, stage, {t: _empty(stage, t) for t in DECLARED[stage]})
    assert versioned.check_version(tmp_path, stage) == tmp_path / stage / version
    schema, name = DECLARED[stage][table]
    column = schema.fields[-1]                       # one column rewritten with another type
    expected = column.dataType.simpleString()
    wrong = pa.string() if expected != "string" else pa.int32()
    good = _empty(stage, table)
    bad = good.set_column(good.schema.get_field_index(column.name), column.name,
                          pa.array([], wrong))
    part = tmp_path / stage / version / table / "part-00000.parquet"
    pq.write_table(bad, part)
    with pytest.raises(SchemaMismatch) as err:
        versioned.check_version(tmp_path, stage)
    assert str(err.value) == (
        f"{stage}/{version}: {part}: column '{column.name}' is {spark_type(wrong)}, expected "
        f"{expected} (pipeline.io.schemas.{name}); rebuild it: python "
        f"{versioned.PRODUCERS[stage]} force=true")
    assert isinstance(err.value, versioned.CorruptFile)       # a PipelineError: one line, exit 2


def test_a_missing_column_or_table_and_manifest_declared_tables(tmp_path):
    nodes = _empty("graph", "nodes")
    version = _publish(tmp_path, "graph", {"nodes": nodes.drop_columns(["type"])})
    with pytest.raises(SchemaMismatch, match=r"nodes/part-00000.parquet: column 'type' is missing, "
                                             r"expected string \(pipeline.io.schemas.NODES\)"):
        check_tables(tmp_path / "graph" / version, "graph")
    # A table the manifest declares (types as schemas.describe writes them) must exist and match.
    path = tmp_path / "other" / "v1"
    (path / "t").mkdir(parents=True)
    (path / versioned.MANIFEST).write_text('{"schema": {"t": {"a": "bigint"}, "gone": {"b": "int"}}}')
    pq.write_table(pa.table({"a": pa.array([1], pa.int64())}), path / "t" / "p.parquet")
    with pytest.raises(SchemaMismatch, match=r"^other/v1: table 'gone' is missing \(declared in "
                                             r"other/v1/manifest.json\)"):
        check_tables(path, "other")
    (path / versioned.MANIFEST).write_text('{"schema": {"t": {"a": "int"}}}')
    with pytest.raises(SchemaMismatch, match=r"column 'a' is bigint, expected int \(other/v1/"):
        check_tables(path, "other")
    (path / versioned.MANIFEST).write_text('{"schema": {"t": {"a": "bigint"}}}')
    assert check_tables(path, "other") == 1


def test_spark_type_names():
    assert spark_type(pa.list_(pa.list_(pa.float32()))) == "array<array<float>>"
    assert spark_type(pa.large_list(pa.int64())) == "array<bigint>"
    assert spark_type(pa.struct([("a", pa.int32()), ("b", pa.string())])) == "struct<a:int,b:string>"


def test_the_consuming_job_refuses_a_rewritten_table_with_one_line(spark, make_cfg, tmp_path):
    """graph/edges rewritten with `weight` as double: jobs/sample.py exits 2, publishes nothing."""
    from pipeline.ingest import run_ingest
    src = tmp_path / "e.csv"
    src.write_text("u,i\n" + "".join(f"u{k % 5},i{k % 7}\n" for k in range(30)))
    cfg = make_cfg("data=edges", f"data.path={src}", "data.src_col=u", "data.dst_col=i")
    graph = run_ingest(spark, cfg)
    edges = versioned.resolve(cfg.run_dir, "graph") / "edges"
    parts = sorted(edges.glob("*.parquet"))
    t = pq.read_table(edges)
    for p in parts:
        p.unlink()
    part = edges / "part-00000-rewritten.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("weight"), "weight",
                                t.column("weight").cast(pa.float64())), part)
    proc = subprocess.run(
        [sys.executable, "jobs/sample.py", "data=edges", f"data.path={src}", "data.src_col=u",
         "data.dst_col=i", f"run_dir={cfg.run_dir}", "spark.master='local[1]'"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(JVM_NOTICES)]
    assert lines == [
        f"error: graph/{graph.version}: {part}: column 'weight' is double, expected float "
        f"(pipeline.io.schemas.EDGES); rebuild it: python jobs/ingest.py force=true"]
    assert "Traceback" not in proc.stderr + proc.stdout
    for stage in ("split", "neighbors", "pairs", "batches"):
        root = versioned.stage_dir(cfg.run_dir, stage)
        assert not root.exists() or not list(root.iterdir()), stage      # nothing published
    assert versioned.latest_version(cfg.run_dir, "graph") == graph.version
