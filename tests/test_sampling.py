"""The Spark sampling job: determinism, both modes, the split, pairs and minibatches."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipeline.errors import PipelineError
from pipeline.ingest import run_ingest
from pipeline.io import schemas, versioned
from pipeline.sampling import join_mode, memory_mode, pairs as pairing, ppr, run_sample
from pipeline.split import run_split


def write_graph(path, n_users=60, n_items=40, per_user=8, seed=0, timed=True):
    g = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        # Popularity skew, so neighbourhoods have structure.
        items = g.choice(n_items, size=per_user, replace=False,
                         p=np.arange(n_items, 0, -1) / np.arange(n_items, 0, -1).sum())
        for t, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", 1000 * u + t))
    pd.DataFrame(rows, columns=["user", "item", "ts"]).drop(
        columns=[] if timed else ["ts"]).to_csv(path, index=False)
    return path


def small_cfg(make_cfg, path, *extra):
    return make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
                    "data.time_col=ts", "sample.batch_size=16",
                    "sample.easy_negatives=5", *extra)


def files_digest(directory) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in directory.glob("*.parquet"))


def _table(spark, cfg, stage, table):
    return spark.read.parquet(str(versioned.resolve(cfg.run_dir, stage) / table))


def test_movielens_neighbourhoods(spark, ml):
    cfg, result = ml
    nb = _table(spark, cfg, "neighbors", "neighbors").toPandas()
    assert len(nb) == 1682 and sorted(nb["node"]) == list(range(1682))
    assert result.counts["neighbors"]["empty_neighborhoods"] == int((nb["neighbors"].map(len) == 0).sum())
    for node, ids, w in zip(nb["node"], nb["neighbors"], nb["weights"]):
        assert len(ids) <= cfg.sample.num_neighbors and len(ids) == len(w)
        if len(ids):
            assert abs(float(np.sum(w)) - 1.0) < 1e-5 and node not in ids
            assert all(np.diff(w) <= 0) and len(set(ids)) == len(ids)
    # At the defaults the top-T is the score's ranking, not noise (the bar: 90%).
    q = result.counts["neighbors"]["quality"]
    assert q["items"] == cfg.sample.quality_sample
    assert q["seed_agreement"] >= 0.9 and q["exact_overlap"] >= 0.9
    assert 0 < q["max_error_over_bound"] <= 1 and q["power_iteration_max_error"] < 1e-12
    # Item-specific, not popularity: far fewer of the 10% most popular items than raw visits give.
    degree = _table(spark, cfg, "split", "train_edges").groupBy("dst").count().toPandas()
    popular = set(degree.nlargest(len(nb) // 10, "count")["dst"])
    share = np.mean([i in popular for ids in nb["neighbors"] for i in ids])
    assert share < 0.3          # raw visits (β = 0): 0.82 on MovieLens-100K


def test_movielens_split_holds_out_last_two_per_user(spark, ml):
    cfg, result = ml
    held = _table(spark, cfg, "split", "holdout").toPandas()
    train = _table(spark, cfg, "split", "train_edges").toPandas()
    assert result.counts["split"] == {**result.counts["split"], "validation": 943, "test": 943,
                                      "train_edges": 100_000 - 2 * 943}
    # No held-out interaction is in the sampled graph.
    leaked = held.merge(train, left_on=["user", "target"], right_on=["src", "dst"])
    assert leaked.empty
    # Test is each user's latest interaction, validation the one before; query = latest remaining.
    last_train = train.sort_values(["time", "dst"]).groupby("src").tail(1).set_index("src")["dst"]
    assert (held.set_index("user")["query"] == last_train.reindex(held["user"]).values).all()
    t = held.pivot(index="user", columns="kind", values="time")
    assert (t["test"] >= t["validation"]).all()
    assert (t["validation"] >= train.groupby("src")["time"].max().reindex(t.index)).all()


def test_movielens_pairs_come_from_training_edges_only(spark, ml):
    cfg, _ = ml
    train = _table(spark, cfg, "split", "train_edges").toPandas()
    train = train.sort_values(["src", "time", "dst"])
    nxt = train.groupby("src")["dst"].shift(-1)
    expected = set(zip(train["dst"][nxt.notna()], nxt[nxt.notna()].astype(np.int64)))
    expected = {(q, p) for q, p in expected if q != p}
    pairs = _table(spark, cfg, "pairs", "pairs").toPandas()
    assert set(zip(pairs["query"], pairs["positive"])) == expected
    hard = _table(spark, cfg, "pairs", "hard_negatives").toPandas()
    positives = pairs.groupby("query")["positive"].apply(set)
    for q, cands in zip(hard["query"], hard["candidates"]):
        assert not set(cands) & positives[q]


@pytest.mark.parametrize("repeat", [False, True])
def test_basket_pairs_without_times(spark, repeat):
    """Without times a user's items pair up within the window in a seeded order.

    Known answer: a user with n items gives n - d pairs at each distance d <=
    window, all between that user's items; repeated, every co-engagement is a row.
    """
    g = np.random.default_rng(3)
    baskets = {100 + u: g.choice(12, size=g.integers(1, 7), replace=False) for u in range(25)}
    rows = [(u, int(i), 1.0, None) for u, items in baskets.items() for i in items]
    edges = spark.createDataFrame(rows, schemas.EDGES)
    window = 2
    pairs = {s: pairing.build_pairs(edges, bipartite=True, has_time=False, window=window,
                                    seed=s, repeat=repeat)[0].toPandas() for s in (0, 1)}
    together = {(int(a), int(b)) for items in baskets.values() for a in items for b in items}
    expected_rows = sum(max(0, len(items) - d) for items in baskets.values()
                        for d in range(1, window + 1))
    for p in pairs.values():
        assert set(zip(p["query"], p["positive"])) <= together
        assert (len(p) == expected_rows) if repeat else (len(p) == len(p.drop_duplicates()))
    if repeat:
        assert len(pairs[0].drop_duplicates()) < len(pairs[0])   # popular pairs repeat
    assert sorted(map(tuple, pairs[0].values)) != sorted(map(tuple, pairs[1].values))


def test_movielens_batches_hold_exact_computation_graphs(spark, ml):
    cfg, result = ml
    assert result.counts["batches"]["train_batches"] > 0
    nb = _table(spark, cfg, "neighbors", "neighbors").toPandas().set_index("node")
    pairs = set(map(tuple, _table(spark, cfg, "pairs", "pairs").toPandas().values))
    batch = _table(spark, cfg, "batches", "train").orderBy("batch").first().asDict()
    T, K = cfg.sample.num_neighbors, cfg.model.num_layers
    layers = [np.array(x) for x in batch["nodes"]]
    assert len(layers) == K + 1 and len(batch["nbr_idx"]) == K
    targets = layers[0]
    q, p = targets[batch["query"]], targets[batch["positive"]]
    assert len(q) == cfg.sample.batch_size and all((a, b) in pairs for a, b in zip(q, p))
    assert len(batch["easy"]) == cfg.sample.easy_negatives
    for k in range(K):
        assert np.array_equal(layers[k + 1][:len(layers[k])], layers[k])   # self is a prefix
        assert len(set(layers[k + 1])) == len(layers[k + 1])
        idx = np.array(batch["nbr_idx"][k]).reshape(len(layers[k]), T)
        w = np.array(batch["nbr_weight"][k], dtype=np.float32).reshape(len(layers[k]), T)
        for row, node in enumerate(layers[k]):
            ids, wts = nb.loc[node, "neighbors"], nb.loc[node, "weights"]
            n = len(ids)
            assert list(layers[k + 1][idx[row, :n]]) == list(ids)
            np.testing.assert_array_equal(w[row, :n], np.asarray(wts, dtype=np.float32))
            assert (idx[row, n:] == -1).all() and (w[row, n:] == 0).all()


def test_rerun_reuses_every_stage(spark, ml):
    cfg, first = ml
    again = run_sample(spark, cfg)
    assert again.versions == first.versions and set(again.reused) == set(first.versions)


def test_partitioning_does_not_change_a_byte(spark, make_cfg, tmp_path):
    path = write_graph(tmp_path / "g.csv")
    digests = {}
    for parts in (1, 4):
        cfg = small_cfg(make_cfg, path, f"sample.partitions={parts}",
                        f"run_dir={tmp_path}/p{parts}")
        run_ingest(spark, cfg)
        run_sample(spark, cfg)
        digests[parts] = {t: files_digest(versioned.resolve(cfg.run_dir, s) / t)
                          for s, t in [("neighbors", "neighbors"), ("neighbors", "hard_candidates"),
                                       ("batches", "train")]}
    assert digests[1] == digests[4]


@pytest.mark.parametrize("bipartite", [True, False])
def test_join_mode_equals_memory_mode(spark, make_cfg, tmp_path, bipartite):
    path = write_graph(tmp_path / "g.csv", n_users=30, n_items=25, per_user=5)
    tables, counts = {}, {}
    for mode in ("memory", "join"):
        cfg = small_cfg(make_cfg, path, f"sample.mode={mode}", f"run_dir={tmp_path}/{mode}",
                        f"data.bipartite={str(bipartite).lower()}", "split.protocol=random_edges",
                        "sample.push_threshold=0.01",
                        # Bipartite quality is compared per start below, at less cost.
                        f"sample.quality_sample={0 if bipartite else 6}")
        run_ingest(spark, cfg)
        counts[mode] = run_sample(spark, cfg, training=False).counts["neighbors"]
        tables[mode] = (_table(spark, cfg, "neighbors", "neighbors"),
                        _table(spark, cfg, "neighbors", "hard_candidates"))
    # Bit for bit, weights included (integer sums do not depend on Spark's order).
    for j, m in zip(tables["join"], tables["memory"]):
        assert sorted(j.collect()) == sorted(m.collect())
    # The same propagation: the same work.
    for key in ("pushes", "max_pushes_per_item"):
        assert counts["join"][key] == counts["memory"][key] > 0
    if not bipartite:   # the same quality check, join mode's computed per start in the tasks
        mem = {k: v for k, v in counts["memory"]["quality"].items()
               if k not in ("seconds", "power_iteration_max_error")}
        assert {k: v for k, v in counts["join"]["quality"].items() if k != "seconds"} == mem
        assert mem["items"] == 6


@pytest.mark.parametrize("bipartite", [True, False])
def test_both_modes_walk_only_from_starts_as_a_full_run_would(spark, bipartite):
    """What an incremental refresh relies on: a ``starts`` subset gets exactly the full run's rows."""
    g = np.random.default_rng(3)
    n_items, n_users = 30, 20 if bipartite else 0
    src = g.integers(n_items, n_items + n_users, 120) if bipartite else g.integers(0, n_items, 120)
    dst = g.integers(0, n_items, 120)
    keep = src != dst
    src, dst, weight = src[keep], dst[keep], g.uniform(0.5, 2.0, keep.sum()).astype(np.float32)
    edges = spark.createDataFrame(pd.DataFrame({"src": src, "dst": dst, "weight": weight,
                                                "time": None}), schemas.EDGES)
    t = ppr.transitions(src, dst, weight.astype(np.float64), n_items + n_users, n_items, bipartite)
    kw = dict(walk_length=3, restart_prob=0.3, push_threshold=0.02, degree_exponent=0.7, seed=7,
              num_neighbors=5, window=(5, 15), num_hard=3, partitions=3)
    chosen = [0, 4, 5, 17, 29]
    starts = spark.createDataFrame(pd.DataFrame({"node": chosen}))
    full = memory_mode.sample(spark, t, **kw).where(F.col("node").isin(chosen))
    assert full.count() == len(chosen)
    assertDataFrameEqual(memory_mode.sample(spark, t, **kw, starts=starts), full)
    assertDataFrameEqual(join_mode.sample(spark, edges, n_items, bipartite, **kw, starts=starts),
                         full)
    if bipartite:   # the quality check's values per start, computed in the tasks (one hop: cheaper)
        walk = dict(walk_length=1, restart_prob=0.3)
        q = dict(seed=7, push_threshold=0.2, factor=ppr.error_factor(1, 0.3, True),
                 degree_exponent=0.7, num_neighbors=2, window=(2, 4), num_hard=0)
        got = join_mode.quality_per_start(spark, edges, n_items, True, np.array(chosen),
                                          partitions=3, **walk, **q)
        starts = np.array(chosen)

        def visits(eps):
            return ppr.Visits.of(t, starts, ppr.propagate(t, starts, push_threshold=eps, **walk)[0])

        want = ppr.quality_per_start(visits(0.2), visits(0.0), t.deg[starts], **q)
        for g_, w_ in zip(got, want):
            np.testing.assert_array_equal(g_, w_)
        # Pruned down to no neighbours (NaN), to fewer exact ones, and mass lost everywhere.
        assert np.isnan(want[0]).any() and (want[1] < 1).any() and (want[2] > 0).all()


def test_homogeneous_random_edges_without_times(spark, make_cfg, tmp_path):
    path = write_graph(tmp_path / "g.csv", timed=False)
    cfg = make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
                   "data.bipartite=false", "split.protocol=random_edges", "split.holdout_fraction=0.2",
                   "sample.batch_size=16", "sample.easy_negatives=5")
    run_ingest(spark, cfg)
    split = run_split(spark, cfg)                       # jobs/split.py; sampling reuses it
    result = run_sample(spark, cfg)
    assert not split.reused and "split" in result.reused
    assert result.versions["split"] == split.version
    held = _table(spark, cfg, "split", "holdout")
    train = _table(spark, cfg, "split", "train_edges")
    n_held = held.count()
    assert 0.1 < n_held / (n_held + train.count()) < 0.3
    assert held.join(train, (held.query == train.src) & (held.target == train.dst)).count() == 0
    assert held.where(F.col("query") != F.col("user")).count() == 0
    # On an item-item graph the positives are the training edges, as the held-out edges ask.
    pairs = _table(spark, cfg, "pairs", "pairs")
    edges = train.where(F.col("src") != F.col("dst")).select(
        F.col("src").alias("query"), F.col("dst").alias("positive")).distinct()
    assertDataFrameEqual(pairs, edges)
    assert result.counts["batches"]["train_batches"] > 0


def test_leave_last_out_needs_times(spark, make_cfg, tmp_path):
    path = write_graph(tmp_path / "g.csv", timed=False)
    cfg = make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item")
    run_ingest(spark, cfg)
    with pytest.raises(PipelineError, match="split.protocol=leave_last_out needs edge times"):
        run_sample(spark, cfg)


def test_bad_sampling_config(spark, make_cfg):
    with pytest.raises(PipelineError, match=r"sample.push_threshold must be in \[0, 1 - sample"):
        run_sample(spark, make_cfg("sample.push_threshold=0.5"))       # the start could not push
    with pytest.raises(PipelineError, match=r"sample.walk_length must be in \[1, 64\]"):
        run_sample(spark, make_cfg("sample.walk_length=65"))
