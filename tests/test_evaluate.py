"""Evaluation: metrics against brute force, bootstrap CIs, faiss, baselines, published stages."""
from __future__ import annotations

import json
import re
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from pipeline import metrics as M
from pipeline.errors import PipelineError
from pipeline.evaluate import baselines, index as ann, print_summary, run_evaluate
from pipeline.evaluate.data import EvalData
from pipeline.io import versioned
from pipeline.io.manifests import ReleaseManifest
from pipeline.io.embeddings import read_embeddings
from pipeline.io.kinds import RETIRED_ID
from pipeline.serve import similar_items

# --- metrics ---------------------------------------------------------------------------------


def test_drop_query_keeps_order_and_k_items():
    top = np.array([[3, 1, 2], [1, 2, 3], [4, 5, -1]])
    assert M.drop_query(top, np.array([1, 9, 4]), 2).tolist() == [[3, 2], [1, 2], [5, -1]]
    # Fewer columns than k + 1 (a catalogue smaller than k + 1): the query never stays.
    assert M.drop_query(top, np.array([2, 9, 5]), 3).tolist() == [[3, 1, -1], [1, 2, 3], [4, -1, -1]]


def test_only_items_drops_ruled_out_items_in_order():
    top = np.array([[3, 1, 2], [0, 4, -1]])
    allowed = np.array([True, False, True, True, False])
    assert M.only_items(top, allowed).tolist() == [[3, 2, -1], [0, -1, -1]]


def test_hit_rate_and_mrr_match_brute_force():
    g = np.random.default_rng(0)
    n_items, n_q, ks = 30, 200, [1, 5, 10]
    scores = g.normal(size=(n_q, n_items))
    queries, targets = g.integers(0, n_items, n_q), g.integers(0, n_items, n_q)
    order = np.argsort(-scores, axis=1)
    top = M.drop_query(order[:, :max(ks) + 1], queries, max(ks))
    got = M.summarize(M.target_ranks(top, targets), ks)
    hits = {k: 0 for k in ks}
    rr = 0.0
    for q, t, row in zip(queries, targets, order):
        ranked = [int(i) for i in row if i != q]          # every item but the query, best first
        rank = ranked.index(t) + 1 if t != q else None     # a target equal to its query is never found
        for k in ks:
            hits[k] += rank is not None and rank <= k
        rr += 1 / rank if rank is not None and rank <= max(ks) else 0.0
    for k in ks:
        assert got[f"hit_rate@{k}"] == pytest.approx(hits[k] / n_q)
    assert got["mrr"] == pytest.approx(rr / n_q)


def test_tiny_known_ranking():
    # Query 0's list is [0, 7, 3, 5]: the query goes, 3 is at rank 2.
    top = M.drop_query(np.array([[0, 7, 3, 5], [8, 9, 1, 2]]), np.array([0, 1]), 3)
    ranks = M.target_ranks(top, np.array([3, 4]))
    assert ranks.tolist() == [2, 0]
    assert M.summarize(ranks, [1, 3]) == {"hit_rate@1": 0.0, "hit_rate@3": 0.5, "mrr": 0.25}


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    g = np.random.default_rng(1)
    values = {"a": M.per_query(g.integers(0, 40, 500), [10]),
              "b": M.per_query(g.integers(0, 40, 500), [10])}
    ci = M.bootstrap_ci(values, samples=300, seed=7)
    for m, per in values.items():
        for name, v in per.items():
            lo, hi = ci[m][name]
            assert lo <= v.mean() <= hi and lo < hi
    assert ci == M.bootstrap_ci(values, samples=300, seed=7)
    assert ci != M.bootstrap_ci(values, samples=300, seed=8)


# --- faiss -----------------------------------------------------------------------------------


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_equals_numpy_brute_force():
    x = _unit(300, 16)
    q = np.arange(0, 300, 7)
    top, scores = ann.search(ann.exact_index(x), x, q, 10)
    s = x[q] @ x.T
    s[np.arange(len(q)), q] = -np.inf                      # the query is excluded
    expect = np.argsort(-s, axis=1, kind="stable")[:, :10]
    assert np.array_equal(top, expect)
    assert np.allclose(scores, np.take_along_axis(s, expect, axis=1), atol=1e-5)
    assert not (top == q[:, None]).any()


def test_placeholders_are_never_ranked():
    """Evaluation and validation rank live items only, however close a placeholder sits."""
    import torch

    from pipeline.train.validation import hit_rate
    x = _unit(200, 16, seed=3)
    live = np.ones(200, bool)
    live[[4, 50, 51, 120]] = False
    x[50] = x[10]                                          # a placeholder on top of item 10
    q = np.array([10, 0, 199, 77])
    top = baselines.embedding_topk(x, q, 8, live)
    s = x[q] @ x.T
    s[:, ~live] = -np.inf
    s[np.arange(len(q)), q] = -np.inf
    assert np.array_equal(top, np.argsort(-s, axis=1, kind="stable")[:, :8])
    assert 50 in baselines.embedding_topk(x, q, 8)[0]       # what leaving them out prevents
    targets = np.array([50, top[1, 0], top[2, 7], top[3, 0]])
    expect = np.mean([t in row for t, row in zip(targets, top)])
    got = hit_rate(torch.from_numpy(x), torch.from_numpy(q), torch.from_numpy(targets), 8,
                   torch.from_numpy(live))
    assert got == expect == 0.75


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall(kind):
    x = _unit(2000, 16)
    q = np.arange(0, 2000, 10)
    exact, _ = ann.search(ann.exact_index(x), x, q, 10)
    approx, _ = ann.search(ann.approximate_index(x, kind, nprobe=8), x, q, 10)
    r = ann.recall(approx, exact, 10)
    assert 0.8 < r <= 1.0
    assert ann.recall(exact, exact, 10) == 1.0


# --- baselines on a tiny graph with known answers --------------------------------------------

def _tiny(src, dst, n_items, n_nodes, weight=None, bipartite=True):
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    w = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
    return EvalData(run_dir="", graph_version="", split_version="", n_items=n_items, n_nodes=n_nodes,
                    bipartite=bipartite, feature_names=[], queries=np.zeros(0, np.int64),
                    targets=np.zeros(0, np.int64), live=np.ones(n_items, bool), src=src, dst=dst,
                    weight=w)


# Items 0-3, users 4-6: u4 {0, 1}, u5 {0, 1, 2}, u6 {1, 2}; item 3 has no interaction.
TINY = _tiny([4, 4, 5, 5, 5, 6, 6], [0, 1, 0, 1, 2, 1, 2], 4, 7)


def test_popularity_order_without_the_query():
    assert TINY.degree.tolist() == [2, 3, 2, 0]
    top = baselines.popularity(TINY, np.array([1, 3]), 2)
    assert top.tolist() == [[0, 2], [1, 0]]


def test_item_knn_is_cosine_of_cooccurrence():
    # Cosines: (0,1) = 2/sqrt(6) = 0.816, (0,2) = 0.5, (1,2) = 0.816; item 3 shares no user.
    top = baselines.item_knn(TINY, np.array([0, 2, 3]), 3, similarity="cosine", bm25_b=0.75)
    assert top.tolist() == [[1, 2, -1], [1, 0, -1], [-1, -1, -1]]


def test_item_knn_matches_numpy_on_weighted_graph():
    g = np.random.default_rng(3)
    n_items, n_users = 25, 40
    pairs = {(int(u), int(i)) for u, i in zip(g.integers(0, n_users, 300), g.integers(0, n_items, 300))}
    u, i = map(np.array, zip(*sorted(pairs)))
    w = g.uniform(0.5, 3, len(u))
    data = _tiny(u + n_items, i, n_items, n_items + n_users, weight=w)
    m = np.zeros((n_items, n_users))
    m[i, u] = w
    unit = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    q = np.arange(n_items)
    cos[q, q] = -np.inf
    top = baselines.item_knn(data, q, 5, similarity="cosine", bm25_b=0.75)
    for row, got in zip(cos, top):
        expect = [j for j in np.argsort(-row, kind="stable")[:5] if row[j] > 0]
        assert got[:len(expect)].tolist() == expect


def test_random_walk_ranks_by_visits_from_the_query():
    # From item 0 a hop lands on item 1 with prob 5/12 and on item 2 with 1/6; β = 0: raw visits.
    top = baselines.random_walk(TINY, np.array([0, 3]), 3, walk_length=2, restart_prob=0.3,
                                push_threshold=0.0, degree_exponent=0.0, seed=0)
    assert top[0].tolist() == [1, 2, -1]        # never the query, never the unreachable item 3
    assert top[1].tolist() == [-1, -1, -1]      # item 3 cannot be left


def test_als_returns_other_items_deterministically():
    g = np.random.default_rng(4)
    pairs = {(int(u), int(i)) for u, i in zip(g.integers(0, 30, 400), g.integers(0, 20, 400))}
    u, i = map(np.array, zip(*sorted(pairs)))
    data = _tiny(u + 20, i, 20, 50)
    q = np.arange(20)
    kw = dict(factors=8, iterations=5, regularization=0.01, seed=0)
    top = baselines.als(data, q, 5, **kw)
    assert top.shape == (20, 5) and not (top == q[:, None]).any()
    assert np.array_equal(top, baselines.als(data, q, 5, **kw))


# --- the published stages on a small real run -----------------------------------------------

def _write_graph(path, n_users=50, n_items=40, per_user=8, seed=0):
    g = np.random.default_rng(seed)
    p = np.arange(n_items, 0, -1) / np.arange(n_items, 0, -1).sum()
    lines = ["user,item,ts"]
    for u in range(n_users):
        for t, i in enumerate(g.choice(n_items, size=per_user, replace=False, p=p)):
            lines.append(f"u{u},i{i},{1000 * u + t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def publish_embeddings(run_dir, matrix, ids, inputs, queries=None):
    """A stand-in for the inference stage: an `embeddings` stage of the EMBEDDINGS schema
    (items search with ``queries``, by default their own embeddings)."""
    queries = matrix if queries is None else queries
    with versioned.publish(run_dir, "embeddings", versioned.fingerprint([inputs, matrix.sum()]),
                           inputs=inputs) as out:
        (out.path / "embeddings").mkdir()
        pq.write_table(pa.table({"node": pa.array(np.arange(len(matrix)), pa.int64()),
                                 "id": pa.array(ids, pa.string()),
                                 "embedding": pa.array(list(matrix), pa.list_(pa.float32())),
                                 "query": pa.array(list(queries), pa.list_(pa.float32()))}),
                       out.path / "embeddings" / "part-0.parquet")
    return out.version


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    """A small timed bipartite graph, ingested and sampled, with random item embeddings."""
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR
    from pipeline.ingest import run_ingest
    from pipeline.sampling import run_sample
    tmp = tmp_path_factory.mktemp("evalrun")
    path = _write_graph(tmp / "edges.csv")
    overrides = [f"run_dir={tmp / 'run'}", "data=edges", f"data.path={path}", "data.src_col=user",
                 "data.dst_col=item", "data.time_col=ts",
                 "sample.batch_size=16", "sample.easy_negatives=5", "eval.ks=[5,10]",
                 "eval.bootstrap=200", "eval.als_factors=8",
                 "eval.als_iterations=3", "eval.map_items=30"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_ingest(spark, cfg)
    sample = run_sample(spark, cfg)
    nodes = pq.read_table(versioned.resolve(cfg.run_dir, "graph") / "nodes").to_pandas()
    items = nodes[nodes["type"] == "item"].sort_values("node")
    emb = publish_embeddings(cfg.run_dir, _unit(len(items), 8, seed=5), list(items["id"]),
                             {"neighbors": sample.versions["neighbors"]})
    return cfg, emb, list(items["id"])


def test_metrics_json_structure_and_report(small_run, capsys):
    cfg, emb, _ = small_run
    result = run_evaluate(cfg)
    path = versioned.resolve(cfg.run_dir, "eval", result.version)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics == result.metrics
    assert metrics["dataset"] == "edges" and metrics["protocol"] == "leave_last_out"
    assert metrics["split"] == "test" and metrics["num_queries"] == 50
    assert set(metrics["methods"]) == {"popularity", "random_walk", "item_knn", "als", "ease",
                                       "node2vec", "lightgcn", "pinsage"}
    assert "features_only" in metrics["notes"]           # this graph has no item features
    for m in metrics["methods"].values():
        for name in ("hit_rate@5", "hit_rate@10", "mrr"):
            lo, hi = m["ci95"][name]
            assert 0 <= lo <= m[name] <= hi <= 1
        assert m["hit_rate@5"] <= m["hit_rate@10"]
    assert metrics["versions"]["embeddings"] == emb
    assert metrics["vs_best_baseline"]["baseline"] in set(metrics["methods"]) - {"pinsage"}
    for png in ("hit_rate_at_k.png", "embedding_map.png"):
        assert (path / "report" / png).stat().st_size > 1000
    assert "training_curves" in metrics["notes"]         # no model, so no TensorBoard logs
    assert (path / "report" / "metrics.md").read_text().startswith("| method | hit_rate@5 |")
    print_summary(result)
    out = capsys.readouterr().out
    assert "| pinsage |" in out and "recall@10" in out
    again = run_evaluate(cfg)
    assert again.reused and again.version == result.version
    assert out.rstrip().endswith(f"report: {path / 'report' / 'report.html'}")


def test_report_html_shows_examples_by_name(small_run, tmp_path):
    """Each example lists exactly PinSage's top 10 (brute force) by readable name, target marked."""
    cfg, emb_version, ids = small_run
    names = tmp_path / "names.csv"
    names.write_text("item,title\n" + "".join(f"{i},film {i}\n" for i in ids))
    cfg = OmegaConf.merge(cfg, {"data": {"names_path": str(names), "names_id_col": "item",
                                         "names_col": "title"}})
    result = run_evaluate(cfg)
    page = Path(result.report).read_text()
    assert page.count("data:image/png;base64,") == 2          # no training curves: no model
    assert page.count("<tr><th>") == 1 + len(result.metrics["methods"])
    best = result.metrics["vs_best_baseline"]["baseline"]
    matrix = read_embeddings(cfg.run_dir, emb_version).matrix
    found = re.findall(r"query: <b>film (\S+)</b> &mdash; held-out target: film (\S+)</caption>"
                       r"<tr><td><b>pinsage</b><ol>(.*?)</ol></td><td><b>(\S+)</b>", page)
    assert len(found) == cfg.eval.examples and {f[3] for f in found} == {best}
    for query, target, listed, _ in found:
        q = ids.index(query)
        scores = matrix @ matrix[q]
        scores[q] = -np.inf
        top = [ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
        shown = re.findall(r"<li class='(hit)?'>(?:&#9733; )?film (\S+)</li>", listed)
        assert [item for _, item in shown] == top
        assert [item for hit, item in shown if hit] == [t for t in top if t == target]
    bad = OmegaConf.merge(cfg, {"data": {"names_col": "nope"}})
    with pytest.raises(PipelineError, match=rf"^{names}: column 'nope' \(data.names_col\) not "
                                            r"found; the file has columns: item, title"):
        run_evaluate(bad)


def test_index_stage_and_similar_items(small_run):
    cfg, emb, ids = small_run
    run_evaluate(cfg)
    manifest = versioned.read_manifest(cfg.run_dir, "index")
    assert manifest["inputs"] == {"embeddings": emb}
    assert set(manifest["quality"]) == {"recall@5", "recall@10"}
    assert 0.9 <= manifest["quality"]["recall@10"] <= 1.0
    matrix = _unit(len(ids), 8, seed=5)
    got, scores = similar_items(cfg.run_dir, [ids[0], ids[3]], k=4)
    for q, row, s in zip([0, 3], got, scores):
        sims = matrix @ matrix[q]
        sims[q] = -np.inf
        expect = np.argsort(-sims)[:4]
        assert row == [ids[j] for j in expect] and ids[q] not in row
        assert np.allclose(s, sims[expect], atol=1e-5)
    with pytest.raises(PipelineError, match="1 of 2 ids are not items"):
        similar_items(cfg.run_dir, [ids[0], "nope"], k=4)


def test_embeddings_from_another_split_are_refused(small_run):
    cfg, _, ids = small_run
    run_dir = cfg.run_dir
    publish_embeddings(run_dir, _unit(len(ids), 8, seed=6), ids, {"split": "v-some-other-split"})
    try:
        with pytest.raises(PipelineError, match="not the split evaluated"):
            run_evaluate(cfg)
    finally:
        # Point back at the good version for the other tests of this module.
        good = versioned.list_versions(run_dir, "embeddings")[0]
        (versioned.stage_dir(run_dir, "embeddings") / versioned.LATEST).write_text(good + "\n")


def test_bad_eval_config(small_run):
    cfg, _, _ = small_run
    with pytest.raises(PipelineError, match="eval.baselines: unknown"):
        run_evaluate(OmegaConf.merge(cfg, {"eval": {"baselines": ["magic"]}}))
    with pytest.raises(ValidationError, match=r"expected one of \[validation, test\]"):
        OmegaConf.merge(cfg, {"eval": {"kind": "train"}})   # the typed config refuses it


def test_removed_items_are_left_out_of_the_served_index(small_run, tmp_path):
    """Placeholders of removed items keep an embedding row but are never served."""
    from pipeline.evaluate.index import publish_index
    cfg, _, _ = small_run
    matrix = _unit(30, 8, seed=9)
    ids = [f"m{i}" for i in range(30)]
    retired = [2, 5, 17]
    for r in retired:
        ids[r] = RETIRED_ID
    emb = publish_embeddings(str(tmp_path), matrix, ids, {})
    result = publish_index(str(tmp_path), cfg.eval, emb, np.array([0, 2, 3, 29]))
    counts = result.manifest["counts"]
    assert (counts["items"], counts["retired_items_left_out"], counts["recall_queries"]) == (27, 3, 3)
    live = [i for i in range(30) if i not in retired]
    got, _ = similar_items(str(tmp_path), [ids[0], ids[29]], k=27)
    for q, row in zip([0, 29], got):
        sims = matrix[live] @ matrix[q]
        expect = [ids[live[j]] for j in np.argsort(-sims) if live[j] != q]
        assert RETIRED_ID not in row and len(row) == 26
        assert row[:5] == expect[:5] and set(row) == set(expect)
    with pytest.raises(PipelineError, match="1 of 1 ids are not items"):
        similar_items(str(tmp_path), [RETIRED_ID], k=3)


def test_similar_items_serves_the_released_index_not_a_newer_one(small_run, tmp_path):
    cfg, _, _ = small_run
    ids = [f"m{i}" for i in range(20)]
    indexes = []
    for seed in (1, 2):                      # two embeddings, each with its own index
        emb = publish_embeddings(str(tmp_path), _unit(20, 8, seed=seed), ids, {})
        indexes.append(ann.publish_index(str(tmp_path), cfg.eval, emb, np.array([0])).version)
    answers = [similar_items(str(tmp_path), ["m0"], k=5, version=v)[0] for v in indexes]
    assert answers[0] != answers[1]
    assert similar_items(str(tmp_path), ["m0"], k=5)[0] == answers[1]       # no release yet
    with versioned.publish(str(tmp_path), versioned.RELEASE, "r" * 64) as out:
        out.manifest.update(ReleaseManifest({"index": indexes[0]}).entries())
    assert similar_items(str(tmp_path), ["m0"], k=5)[0] == answers[0]


def test_compare_aggregators_trains_models_beside_the_run(small_run):
    """jobs/compare_aggregators.py: each aggregator is a real model on the run's own stages,
    scored on the evaluation's rows; the run's ``model`` stage is untouched, a re-run reuses
    every model and the ``compare`` stage."""
    from pipeline.evaluate.compare import run_compare_aggregators
    from pipeline.evaluate.variants import train_and_embed
    cfg, _, items = small_run
    cfg = OmegaConf.merge(cfg, {"compare": {"aggregators": ["importance", "mean"]},
                                "train": {"epochs": 1}, "model": {"hidden_dim": 8}})
    result = run_compare_aggregators(cfg)
    assert not result.reused and set(result.metrics["methods"]) == {"importance", "mean"}
    assert result.metrics["num_queries"] == 50 and result.metrics["split"] == "test"
    for agg, version in result.metrics["models"].items():
        sub = Path(cfg.run_dir) / "_compare" / f"aggregator={agg}"
        assert versioned.read_manifest(str(sub), "model", version)["model"]["aggregator"] == agg
        for stage in ("graph", "split", "neighbors", "batches"):
            assert (sub / stage).resolve() == (Path(cfg.run_dir) / stage).resolve()
        m = result.metrics["methods"][agg]
        assert 0 <= m["hit_rate@5"] <= m["hit_rate@10"] <= 1
    assert not (Path(cfg.run_dir) / "model").exists()
    (matrix, _), again = train_and_embed(cfg, "mean")      # published once, then reused
    assert again == result.metrics["models"]["mean"]
    assert matrix.shape == (len(items), 8)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, rtol=1e-5)
    rerun = run_compare_aggregators(cfg)
    assert rerun.reused and rerun.version == result.version and rerun.metrics == result.metrics
    manifest = versioned.read_manifest(cfg.run_dir, "compare")
    assert set(manifest["inputs"]) == {"graph", "split", "neighbors", "batches"}
    with pytest.raises(PipelineError, match="compare.aggregators"):
        run_compare_aggregators(OmegaConf.merge(cfg, {"compare": {"aggregators": ["median"]}}))


def test_every_method_is_scored_on_the_same_rows(small_run, monkeypatch):
    """All methods' top-k lists are scored against the same held-out rows, in the same order."""
    cfg, _, _ = small_run
    scored = []
    real = M.target_ranks

    def spy(top, targets):
        scored.append((top.shape, targets.copy()))
        return real(top, targets)
    monkeypatch.setattr(M, "target_ranks", spy)
    # Another resample count: a new eval stage, on the same index and embeddings.
    result = run_evaluate(OmegaConf.merge(cfg, {"eval": {"bootstrap": 100}}))
    assert len(scored) == len(result.metrics["methods"]) == 8
    assert all(shape == (result.metrics["num_queries"], 10) for shape, _ in scored)
    assert all(np.array_equal(targets, scored[0][1]) for _, targets in scored)


def test_query_vectors_move_queries_not_candidates(small_run, tmp_path):
    """Items search with their query vectors (z_q + o_q + u: model.query_offsets,
    model.item_bias): every search ranks candidates by (z_q + o_q + u).z_c, exactly."""
    cfg, _, _ = small_run
    matrix = _unit(40, 8, seed=11)
    ids = [f"m{i}" for i in range(40)]
    shift = 3.0 * matrix[7] + 2.0 * matrix[12]          # a strong pull towards items 7 and 12
    offsets = np.zeros_like(matrix)
    offsets[20] = 4.0 * matrix[33]                      # item 20 alone points at item 33
    query_vectors = (matrix + offsets + shift).astype(np.float32)
    version = publish_embeddings(str(tmp_path), matrix, ids, {}, queries=query_vectors)
    emb = read_embeddings(str(tmp_path), version)
    np.testing.assert_array_equal(emb.queries, query_vectors)
    np.testing.assert_array_equal(emb.matrix, matrix)
    queries = np.array([0, 7, 20, 39])
    ann.publish_index(str(tmp_path), OmegaConf.merge(cfg.eval, {"index": "hnsw"}), version,
                      queries)
    top = baselines.embedding_topk(emb.matrix, queries, 5, query_vectors=emb.queries)
    got, scores = similar_items(str(tmp_path), [ids[q] for q in queries], k=5)
    assert 33 in top[2]                                   # the offset's target comes up
    for q, exact_row, served, s in zip(queries, top, got, scores):
        sims = matrix @ (matrix[q] + offsets[q] + shift)
        sims[q] = -np.inf
        expect = np.argsort(-sims)[:5]
        assert list(exact_row) == list(expect)
        assert served == [ids[j] for j in expect]
        assert np.allclose(s, sims[expect], atol=1e-5)
    assert 7 in top[0] and 12 in top[0]                   # the shift's favourites come up
    assert list(baselines.embedding_topk(emb.matrix, queries, 5)[0]) != list(top[0])


def test_hnsw_size_estimate_matches_faiss():
    """The estimate that decides HNSW or IVF is within 10% of the index faiss builds."""
    x = _unit(4000, 16, seed=3)
    built = ann.approximate_index(x, "hnsw", m=8, ef_construction=40)
    actual = faiss.serialize_index(built).nbytes
    assert abs(ann.hnsw_bytes(4000, 16, 8) - actual) / actual < 0.1
    assert ann.choose_index("hnsw", 4000, 16, 8, max_gb=1.0) == ("hnsw", "")
    kind, note = ann.choose_index("hnsw", 4000, 16, 8, max_gb=actual / 2 / 2**30)
    assert kind == "ivf" and "built ivf instead" in note
    assert ann.choose_index("ivf", 4000, 16, 8, max_gb=1e-9) == ("ivf", "")


def test_a_large_graph_is_scored_on_a_sample_and_indexed_with_ivf(small_run):
    """Above eval.large_graph_items, max_queries=0 scores the same seeded sample as
    max_queries=large_graph_queries, with a note; HNSW too big for index_max_gb becomes IVF."""
    cfg, _, ids = small_run
    large = OmegaConf.merge(cfg, {"eval": {"large_graph_items": len(ids),
                                           "large_graph_queries": 7, "index_max_gb": 1e-6,
                                           "baselines": ["popularity"]}})
    result = run_evaluate(large)
    assert result.metrics["num_queries"] == 7
    assert "a seeded sample of 7 of the" in result.metrics["notes"]["queries"]
    assert result.metrics["index"]["type"] == "ivf"
    assert result.index["index"] == "ivf" and "built ivf instead" in result.index["note"]
    explicit = run_evaluate(OmegaConf.merge(cfg, {"eval": {"max_queries": 7,
                                                           "baselines": ["popularity"]}}))
    assert explicit.metrics["methods"]["pinsage"] == result.metrics["methods"]["pinsage"]
    assert "queries" not in explicit.metrics["notes"]
    small = run_evaluate(OmegaConf.merge(cfg, {"eval": {"large_graph_items": len(ids) + 1,
                                                        "large_graph_queries": 7,
                                                        "baselines": ["popularity"]}}))
    assert small.metrics["num_queries"] > 7
