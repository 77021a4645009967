"""Ingest on the real dataset and on small hand-built graphs with exact expected tables."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipeline.ingest import read_graph, run_ingest
from pipeline.io import schemas, versioned


def write_csv(path, text: str) -> str:
    path.write_text(text.lstrip())
    return str(path)


def edges_cfg(make_cfg, path, *extra):
    return make_cfg("data=edges", f"data.path={path}", *extra)


def test_movielens100k(spark, make_cfg):
    cfg = make_cfg()
    result = run_ingest(spark, cfg)
    nodes, edges, manifest = read_graph(spark, cfg.run_dir)
    c = manifest["counts"]
    assert c["nodes"] == {"item": 1682, "user": 943}
    assert c["edge_rows_in"] == 100_000 and c["edges_out"] == 100_000
    assert c["edge_rows_quarantined"] == 0 and c["duplicate_edges_merged"] == 0
    assert result.counts == c
    items = nodes.where(F.col("type") == "item")
    # Items are numbered first, in numeric order of their MovieLens ids.
    assert [tuple(r) for r in items.select("node", "id").orderBy("node").limit(3).collect()] == \
        [(0, "1"), (1, "2"), (2, "3")]
    assert items.agg(F.max("node")).first()[0] == 1681
    names = manifest["feature_names"]
    assert len(names) == c["feature_dim"] == 21
    # Toy Story (id 1): Animation, Children's, Comedy; released 1995.
    toy = dict(zip(names, items.where(F.col("id") == "1").first()["features"]))
    assert {n for n, v in toy.items() if n.startswith("genre=") and v == 1.0} == \
        {"genre=Animation", "genre=Children's", "genre=Comedy"}
    assert sum(v for n, v in toy.items() if n.startswith("genre=")) == 3
    assert nodes.where(F.col("type") == "user").where(F.size("features") > 0).count() == 0
    # Edges are user -> item with integer times; the user namespace is separate.
    joined = (edges.join(nodes.select(F.col("node").alias("src"), F.col("type").alias("st")), "src")
              .join(nodes.select(F.col("node").alias("dst"), F.col("type").alias("dt")), "dst"))
    assert joined.where((F.col("st") != "user") | (F.col("dt") != "item")).count() == 0
    assert edges.where(F.col("time").isNull()).count() == 0
    # Rating of user 196 on movie 242 at 881250949 is one of the edges.
    u196 = nodes.where((F.col("type") == "user") & (F.col("id") == "196")).first()["node"]
    m242 = nodes.where((F.col("type") == "item") & (F.col("id") == "242")).first()["node"]
    row = edges.where((F.col("src") == u196) & (F.col("dst") == m242)).first()
    assert row["time"] == 881250949 and row["weight"] == 1.0


BIPARTITE = """
user,item,ts,w
alice,x,10,1.0
alice,y,20,2.0
bob,x,30,0.5
bob,x,40,1.5
1,1,50,1
"""


def test_bipartite_string_ids_exact_tables(spark, make_cfg, tmp_path):
    path = write_csv(tmp_path / "e.csv", BIPARTITE)
    cfg = edges_cfg(make_cfg, path, "data.src_col=user", "data.dst_col=item",
                    "data.time_col=ts", "data.weight_col=w")
    run_ingest(spark, cfg)
    nodes, edges, manifest = read_graph(spark, cfg.run_dir)
    # Items first (integer-looking ids in numeric order, then strings), then users.
    expected_nodes = spark.createDataFrame(
        [(0, "1", "item", []), (1, "x", "item", []), (2, "y", "item", []),
         (3, "1", "user", []), (4, "alice", "user", []), (5, "bob", "user", [])], schemas.NODES)
    assertDataFrameEqual(nodes, expected_nodes, checkRowOrder=False)
    # User "1" and item "1" are different nodes; bob->x merged: weights summed, latest time.
    expected_edges = spark.createDataFrame(
        [(3, 0, 1.0, 50), (4, 1, 1.0, 10), (4, 2, 2.0, 20), (5, 1, 2.0, 40)], schemas.EDGES)
    assertDataFrameEqual(edges, expected_edges, checkRowOrder=False)
    c = manifest["counts"]
    assert (c["edge_rows_in"], c["duplicate_edges_merged"], c["self_loops_dropped"],
            c["edges_out"]) == (5, 1, 0, 4)
    assert manifest["schema"]["edges"] == {"src": "bigint", "dst": "bigint",
                                           "weight": "float", "time": "bigint"}


def test_homogeneous_parquet_integer_ids(spark, make_cfg, tmp_path):
    table = pa.table({"a": [10, 2, 2, 7, 10, 2], "b": [2, 7, 7, 7, 7, 10]})
    pq.write_table(table, tmp_path / "e.parquet")
    cfg = edges_cfg(make_cfg, tmp_path / "e.parquet", "data.format=parquet",
                    "data.src_col=a", "data.dst_col=b", "data.bipartite=false")
    run_ingest(spark, cfg)
    nodes, edges, manifest = read_graph(spark, cfg.run_dir)
    assertDataFrameEqual(nodes.select("node", "id", "type"), spark.createDataFrame(
        [(0, "2", "item"), (1, "7", "item"), (2, "10", "item")], "node long, id string, type string"))
    # 7->7 is a self-loop; 2->7 appears twice.
    assertDataFrameEqual(edges, spark.createDataFrame(
        [(2, 0, 1.0, None), (0, 1, 2.0, None), (2, 1, 1.0, None), (0, 2, 1.0, None)],
        schemas.EDGES), checkRowOrder=False)
    c = manifest["counts"]
    assert (c["self_loops_dropped"], c["duplicate_edges_merged"], c["edges_out"]) == (1, 1, 4)
    assert c["edge_rows_in"] == c["edges_out"] + c["self_loops_dropped"] + \
        c["duplicate_edges_merged"] + c["edge_rows_quarantined"]


@pytest.mark.parametrize("layout", ["vector", "columns"])
def test_features_from_parquet(spark, make_cfg, tmp_path, layout):
    path = write_csv(tmp_path / "e.csv", "src,dst\nu1,a\nu1,b\nu2,c\n")
    if layout == "vector":
        feats = pa.table({"item": ["a", "b", "zzz"],
                          "vec": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]})
    else:
        feats = pa.table({"item": ["a", "b", "zzz"], "f0": [1, 3, 5], "f1": [2.0, 4.0, 6.0]})
    pq.write_table(feats, tmp_path / "f.parquet")
    cfg = edges_cfg(make_cfg, path, f"data.features_path={tmp_path / 'f.parquet'}",
                    "data.features_id_col=item")
    run_ingest(spark, cfg)
    nodes, _, manifest = read_graph(spark, cfg.run_dir)
    got = {r["id"] + "/" + r["type"]: list(r["features"]) for r in nodes.collect()}
    assert got == {"a/item": [1.0, 2.0], "b/item": [3.0, 4.0], "c/item": [0.0, 0.0],
                   "u1/user": [], "u2/user": []}
    c = manifest["counts"]
    assert (c["feature_dim"], c["items_without_features"], c["feature_rows_unmatched"]) == (2, 1, 1)


def test_rerun_is_idempotent_and_force_makes_new_version(spark, make_cfg, tmp_path):
    path = write_csv(tmp_path / "e.csv", "src,dst\nu,a\nu,b\n")
    cfg = edges_cfg(make_cfg, path)
    first = run_ingest(spark, cfg)
    again = run_ingest(spark, cfg)
    assert again.reused and again.version == first.version
    assert versioned.list_versions(cfg.run_dir, "graph") == [first.version]
    forced = run_ingest(spark, edges_cfg(make_cfg, path, "force=true"))
    assert not forced.reused and forced.version != first.version
    # Changing the input file makes a new version without force.
    write_csv(tmp_path / "e.csv", "src,dst\nu,a\nu,b\nv,b\n")
    changed = run_ingest(spark, cfg)
    assert not changed.reused and changed.counts["edges_out"] == 3


def test_failure_mid_write_keeps_previous_graph(spark, make_cfg, tmp_path, monkeypatch):
    path = write_csv(tmp_path / "e.csv", "src,dst\nu,a\nv,b\n")
    cfg = edges_cfg(make_cfg, path)
    old = run_ingest(spark, cfg)
    write_csv(tmp_path / "e.csv", "src,dst\nu,a\nv,b\nu,b\n")
    from pyspark.sql import DataFrameWriter
    real = DataFrameWriter.parquet

    def failing(self, path, *a, **k):
        if path.endswith("/edges"):
            raise OSError("injected failure while writing edges")
        return real(self, path, *a, **k)

    monkeypatch.setattr(DataFrameWriter, "parquet", failing)
    with pytest.raises(OSError, match="injected failure"):
        run_ingest(spark, cfg)
    assert versioned.latest_version(cfg.run_dir, "graph") == old.version
    assert read_graph(spark, cfg.run_dir)[1].count() == 2
    assert not [p for p in (versioned.stage_dir(cfg.run_dir, "graph")).iterdir()
                if p.name.startswith("_tmp-")]


def test_manifest_is_json_with_counts_and_inputs(spark, make_cfg, tmp_path):
    path = write_csv(tmp_path / "e.csv", "src,dst\nu,a\nu,b\n")
    cfg = edges_cfg(make_cfg, path)
    result = run_ingest(spark, cfg)
    manifest = json.loads((versioned.resolve(cfg.run_dir, "graph") / "manifest.json").read_text())
    assert manifest["version"] == result.version
    assert manifest["config"]["data"]["path"] == path
    assert set(manifest["schema"]) == {"nodes", "edges", "quarantine"}
