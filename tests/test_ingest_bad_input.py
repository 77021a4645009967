"""Every bad-input case gets a clear error naming file, column and row count; nothing is lost."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from pipeline.errors import IngestError
from pipeline.ingest import read_graph, run_ingest
from pipeline.io import versioned

HINT = "set ingest.on_bad_rows=quarantine to move them to the quarantine table instead"


def ingest_csv(spark, make_cfg, tmp_path, text, *overrides, name="e.csv"):
    path = tmp_path / name
    path.write_text(text)
    return run_ingest(spark, make_cfg("data=edges", f"data.path={path}", *overrides)), str(path)


def expect_error(spark, make_cfg, tmp_path, text, *overrides) -> tuple[str, str]:
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(IngestError) as err:
        run_ingest(spark, make_cfg("data=edges", f"data.path={path}", *overrides))
    return str(err.value), str(path)


def test_missing_file(spark, make_cfg, tmp_path):
    with pytest.raises(IngestError) as err:
        run_ingest(spark, make_cfg("data=edges", f"data.path={tmp_path}/nope.csv"))
    assert str(err.value) == f"data.path: no such file or directory: {tmp_path}/nope.csv"


def test_missing_column(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path, "src,dst\na,b\n", "data.src_col=user")
    assert msg == f"{path}: column 'user' (data.src_col) not found; the file has columns: src, dst"


def test_null_ids(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path, "src,dst\na,b\n,c\nd,\n")
    assert msg == (
        f"edges from {path}: 2 bad rows; {HINT}: "
        f"{path}: column 'dst' (data.dst_col): 1 of 3 rows: missing id; "
        '''e.g. {"src":"d","dst":null} | '''
        f"{path}: column 'src' (data.src_col): 1 of 3 rows: missing id; "
        '''e.g. {"src":null,"dst":"c"}''')


def test_non_numeric_time(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path, "src,dst,t\na,b,1\nc,d,yesterday\ne,f,\n",
                             "data.time_col=t")
    assert msg == (f"edges from {path}: 1 bad row; {HINT}: "
                   f"{path}: column 't' (data.time_col): 1 of 3 rows: not numeric; "
                   '''e.g. {"src":"c","dst":"d","t":"yesterday"}''')


def test_bad_weights(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path,
                             "src,dst,w\na,b,1\nc,d,heavy\ne,f,-1\ng,h,\ni,j,NaN\n", "data.weight_col=w")
    assert msg == (
        f"edges from {path}: 4 bad rows; {HINT}: "
        f"{path}: column 'w' (data.weight_col): 1 of 5 rows: missing value; "
        '''e.g. {"src":"g","dst":"h","w":null} | '''
        f"{path}: column 'w' (data.weight_col): 2 of 5 rows: negative or not finite; "
        '''e.g. {"src":"e","dst":"f","w":"-1"} | '''
        f"{path}: column 'w' (data.weight_col): 1 of 5 rows: not numeric; "
        '''e.g. {"src":"c","dst":"d","w":"heavy"}''')


def test_malformed_lines(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path, "src,dst\na,b\nc,d,e\nf\n")
    assert msg == (f"edges from {path}: 2 bad rows; {HINT}: "
                   f"{path}: every column: 2 of 3 rows: malformed line (wrong number of fields); "
                   '''e.g. {"line":"c,d,e"}''')


def _features_error(spark, make_cfg, tmp_path, table) -> tuple[str, str]:
    pq.write_table(table, tmp_path / "f.parquet")
    msg, _ = expect_error(spark, make_cfg, tmp_path, "src,dst\nu,a\nu,b\nu,c\n",
                          f"data.features_path={tmp_path / 'f.parquet'}")
    return msg, str(tmp_path / "f.parquet")


def test_features_wrong_width(spark, make_cfg, tmp_path):
    msg, fpath = _features_error(spark, make_cfg, tmp_path, pa.table(
        {"id": ["a", "b", "c"], "v": [[1.0, 2.0], [1.0, 2.0], [1.0]]}))
    assert msg == (f"features from {fpath}: 1 bad row; {HINT}: "
                   f"{fpath}: column 'v': 1 of 3 rows: wrong width (expected 2); "
                   '''e.g. {"id":"c","features":[1.0]}''')


def test_features_nan(spark, make_cfg, tmp_path):
    msg, fpath = _features_error(spark, make_cfg, tmp_path, pa.table(
        {"id": ["a", "b", "c"], "f0": [1.0, float("nan"), 2.0], "f1": [1, 2, 3]}))
    assert msg == (f"features from {fpath}: 1 bad row; {HINT}: "
                   f"{fpath}: column 'f0, f1': 1 of 3 rows: NaN or infinite value; "
                   '''e.g. {"id":"b","features":["NaN",2.0]}''')


def test_features_not_numeric(spark, make_cfg, tmp_path):
    msg, fpath = _features_error(spark, make_cfg, tmp_path, pa.table({"id": ["a"], "v": ["x"]}))
    assert msg == (f"{fpath}: feature columns must be numeric, or one numeric vector column; "
                   "not numeric: v (string)")


def test_corrupt_parquet_names_the_file(spark, make_cfg, tmp_path):
    path = tmp_path / "e.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError) as err:
        run_ingest(spark, make_cfg("data=edges", f"data.path={path}", "data.format=parquet"))
    assert str(err.value).startswith(f"data.path: cannot read Parquet at {path}: ")


def test_quarantine_keeps_every_bad_row(spark, make_cfg, tmp_path):
    text = "src,dst,w\na,b,1\nc,d,heavy\n,f,1\na,b,2\ng,h,-3\nk,l,1\n"
    pq.write_table(pa.table({"id": ["b", "d", "l"], "v": [[1.0], [float("inf")], [2.0]]}),
                   tmp_path / "f.parquet")
    result, path = ingest_csv(spark, make_cfg, tmp_path, text, "data.weight_col=w",
                              "ingest.on_bad_rows=quarantine",
                              f"data.features_path={tmp_path / 'f.parquet'}")
    c = result.counts
    assert (c["edge_rows_in"], c["edge_rows_quarantined"], c["duplicate_edges_merged"],
            c["edges_out"]) == (6, 3, 1, 2)
    assert c["edge_rows_in"] == c["edges_out"] + c["edge_rows_quarantined"] + \
        c["duplicate_edges_merged"] + c["self_loops_dropped"]
    assert (c["feature_rows_in"], c["feature_rows_quarantined"]) == (3, 1)
    q = spark.read.parquet(str(versioned.resolve(make_cfg().run_dir, "graph") / "quarantine"))
    rows = sorted((r["column"], r["reason"], json.loads(r["row"]).get("src", r["file"][-9:]))
                  for r in q.collect())
    assert rows == [("src", "missing id", None), ("v", "NaN or infinite value", "f.parquet"),
                    ("w", "negative or not finite", "g"), ("w", "not numeric", "c")]
    assert {r["file"] for r in q.collect()} == {path, str(tmp_path / "f.parquet")}
    nodes, edges, _ = read_graph(spark, make_cfg().run_dir)
    got = {r["id"]: list(r["features"]) for r in nodes.where(F.col("type") == "item").collect()}
    assert got == {"b": [1.0], "l": [2.0]}


def test_truncated_parquet_part_names_the_file(spark, make_cfg, tmp_path):
    src = tmp_path / "edges"
    src.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"src": [f"u{i}"], "dst": [f"i{i}"]}), src / f"part-{i}.parquet")
    part = src / "part-1.parquet"
    part.write_bytes(part.read_bytes()[:-20])
    with pytest.raises(IngestError) as err:
        run_ingest(spark, make_cfg("data=edges", f"data.path={src}", "data.format=parquet"))
    size = part.stat().st_size
    assert str(err.value) == (f"data.path: cannot read Parquet at {src}: {part} is truncated "
                              f"or corrupted ({size} bytes, no Parquet footer)")


def test_damage_inside_a_parquet_file_names_the_file(spark, make_cfg, tmp_path):
    path = tmp_path / "e.parquet"
    n = 50_000
    pq.write_table(pa.table({"src": [f"u{i % 997}" for i in range(n)],
                             "dst": [f"i{i % 1009}" for i in range(n)]}), path)
    blob = bytearray(path.read_bytes())
    blob[200:len(blob) // 2] = b"\xab" * (len(blob) // 2 - 200)
    path.write_bytes(bytes(blob))
    with pytest.raises(versioned.CorruptFile) as err:
        run_ingest(spark, make_cfg("data=edges", f"data.path={path}", "data.format=parquet"))
    assert str(err.value).startswith(f"{path} cannot be read (corrupted Parquet?): ")


@pytest.mark.parametrize("mode", ["fail", "quarantine"])
def test_one_percent_bad_rows_at_scale(spark, make_cfg, tmp_path, mode):
    """20,000 rows, every 100th malformed in one of three ways: exact counts either way."""
    lines = ["src,dst,t"]
    for i in range(20_000):
        if i % 100 == 7:
            lines.append([f"u{i % 500},i{i % 3000},soon", f",i{i},{i}", f"u{i},i{i},{i},x"][i // 100 % 3])
        else:
            lines.append(f"u{i % 500},i{(i * 7) % 3000},{i}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = make_cfg("data=edges", f"data.path={path}", "data.time_col=t", f"ingest.on_bad_rows={mode}")
    if mode == "fail":
        with pytest.raises(IngestError) as err:
            run_ingest(spark, cfg)
        assert "\n" not in str(err.value)                  # one line
        head, rest = str(err.value).split(f"{HINT}: ")
        assert head == f"edges from {path}: 200 bad rows; "
        got = [p.split("; e.g. ") for p in rest.split(" | ")]
        assert [g[0] for g in got] == [
            f"{path}: every column: 66 of 20000 rows: malformed line (wrong number of fields)",
            f"{path}: column 'src' (data.src_col): 67 of 20000 rows: missing id",
            f"{path}: column 't' (data.time_col): 67 of 20000 rows: not numeric"]
        # Each example is one of the bad rows of its kind, shown verbatim.
        bad = {i: lines[i + 1] for i in range(7, 20_000, 100)}
        line = json.loads(got[0][1])["line"]
        assert line in bad.values() and line.endswith(",x")
        row = json.loads(got[1][1])
        assert row["src"] is None and f",{row['dst']},{row['t']}" in bad.values()
        row = json.loads(got[2][1])
        assert row["t"] == "soon" and f"{row['src']},{row['dst']},soon" in bad.values()
        assert versioned.latest_version(cfg.run_dir, "graph") is None
        return
    c = run_ingest(spark, cfg).counts
    assert (c["edge_rows_in"], c["edge_rows_quarantined"]) == (20_000, 200)
    assert c["edge_rows_in"] == c["edges_out"] + c["edge_rows_quarantined"] + \
        c["duplicate_edges_merged"] + c["self_loops_dropped"]
    q = spark.read.parquet(str(versioned.resolve(cfg.run_dir, "graph") / "quarantine"))
    assert q.count() == 200
    assert dict(q.groupBy("reason").count().collect()) == {
        "malformed line (wrong number of fields)": 66, "missing id": 67, "not numeric": 67}


def test_a_graph_with_one_item_stops_with_its_counts(spark, make_cfg, tmp_path):
    msg, path = expect_error(spark, make_cfg, tmp_path, "src,dst\nu1,i1\nu2,i1\nu3,\n",
                             "ingest.on_bad_rows=quarantine")
    assert msg == (f"ingest: {path} gives 1 item(s) (3 edge rows in, 1 quarantined); a graph "
                   f"needs at least 2 items to embed: check data.path, data.src_col and "
                   f"data.dst_col")
    assert versioned.latest_version(str(tmp_path / "run"), "graph") is None
