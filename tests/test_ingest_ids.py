"""Node numbers across ingest versions: carried over, never re-numbered or reused."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from pipeline.data.features import build_feature_store
from pipeline.data.split import read_live_items
from pipeline.ingest import read_graph, run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample


def _nodes(spark, cfg):
    nodes, _, manifest = read_graph(spark, cfg.run_dir)
    return sorted(tuple(r) for r in nodes.select("node", "id", "type").collect()), manifest


def _edges_by_id(spark, cfg):
    nodes, edges, _ = read_graph(spark, cfg.run_dir)
    ids = nodes.select("node", "id")
    named = (edges.join(ids.select(F.col("node").alias("src"), F.col("id").alias("s")), "src")
             .join(ids.select(F.col("node").alias("dst"), F.col("id").alias("d")), "dst"))
    return sorted((r["s"], r["d"]) for r in named.collect())


def test_ids_stay_stable_across_new_removed_and_renamed_nodes(spark, make_cfg, tmp_path):
    src = tmp_path / "e.csv"
    src.write_text("u,i,t\nu1,a,1\nu1,b,2\nu2,b,1\nu2,c,2\nu3,c,1\n")
    overrides = ("data=edges", f"data.path={src}", "data.src_col=u", "data.dst_col=i",
                 "data.time_col=t")
    cfg = make_cfg(*overrides)
    run_ingest(spark, cfg)
    nodes, _ = _nodes(spark, cfg)
    assert nodes == [(0, "a", "item"), (1, "b", "item"), (2, "c", "item"),
                     (3, "u1", "user"), (4, "u2", "user"), (5, "u3", "user")]

    # b renamed b2, new item d, user u3 removed, new user u4.
    src.write_text("u,i,t\nu1,a,1\nu1,b2,2\nu2,c,1\nu2,d,2\nu4,d,1\n")
    second = run_ingest(spark, cfg)
    nodes, manifest = _nodes(spark, cfg)
    # Items keep their numbers; b's number is retired (placeholder, never reused);
    # b2 and d come after every number issued so far; users follow the items in
    # their old order, so they move only by the number of item slots added (two).
    assert nodes == [(0, "a", "item"), (1, "", "item"), (2, "c", "item"),
                     (3, "b2", "item"), (4, "d", "item"),
                     (5, "u1", "user"), (6, "u2", "user"), (7, "", "user"), (8, "u4", "user")]
    c = manifest["counts"]
    assert c["nodes"] == {"item": 5, "user": 4} and c["nodes_out"] == 9
    assert c["retired_nodes"] == {"item": 1, "user": 1}
    assert manifest["inputs"]["id_map"] != second.version
    assert _edges_by_id(spark, cfg) == [("u1", "a"), ("u1", "b2"), ("u2", "c"), ("u2", "d"),
                                        ("u4", "d")]

    # Retired numbers stay retired; a removed id that comes back gets a new number.
    src.write_text("u,i,t\nu1,a,1\nu2,c,1\nu2,b,2\nu5,e,1\n")
    run_ingest(spark, cfg)
    nodes, manifest = _nodes(spark, cfg)
    assert nodes == [(0, "a", "item"), (1, "", "item"), (2, "c", "item"), (3, "", "item"),
                     (4, "", "item"), (5, "b", "item"), (6, "e", "item"),
                     (7, "u1", "user"), (8, "u2", "user"), (9, "", "user"), (10, "", "user"),
                     (11, "u5", "user")]
    assert manifest["counts"]["retired_nodes"] == {"item": 3, "user": 2}
    live = read_live_items(cfg.run_dir, versioned.latest_version(cfg.run_dir, "graph"), 7)
    assert live.tolist() == [True, False, True, False, False, True, True]

    # Downstream works on a graph with retired numbers: the feature store is
    # dense (zeros for placeholders) and sampling gives placeholders no neighbours.
    store = build_feature_store(versioned.resolve(cfg.run_dir, "graph") / "nodes",
                                tmp_path / "features.npy")
    assert store.num_items == 7
    result = run_sample(spark, cfg)  # users with < 3 interactions hold nothing out
    nb = spark.read.parquet(str(versioned.resolve(cfg.run_dir, "neighbors",
                                                  result.versions["neighbors"]) / "neighbors"))
    got = {r["node"]: list(r["neighbors"]) for r in nb.collect()}
    assert sorted(got) == list(range(7))
    assert got[0] == got[1] == got[3] == got[4] == []
    assert got[2] == [5] and got[5] == [2] and got[6] == []
    assert store.gather(np.arange(7)).shape == (7, 0)


def test_force_rebuild_keeps_the_numbering(spark, make_cfg, tmp_path):
    src = tmp_path / "e.csv"
    src.write_text("src,dst\n3,1\n1,2\n2,10\n")
    cfg = make_cfg("data=edges", f"data.path={src}", "data.bipartite=false")
    run_ingest(spark, cfg)
    first, _ = _nodes(spark, cfg)
    run_ingest(spark, make_cfg("data=edges", f"data.path={src}", "data.bipartite=false",
                               "force=true"))
    again, manifest = _nodes(spark, cfg)
    assert again == first == [(0, "1", "item"), (1, "2", "item"), (2, "3", "item"),
                              (3, "10", "item")]
    assert manifest["counts"]["retired_nodes"] == {}
