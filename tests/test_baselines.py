"""The graph baselines added beside the implicit ones: EASE, node2vec, LightGCN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluate import baselines
from pipeline.evaluate.data import EvalData
from pipeline.evaluate.run import _methods


def _data(src, dst, n_items, n_nodes, weight=None, bipartite=True, live=None):
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    w = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
    return EvalData(run_dir="", graph_version="", split_version="", n_items=n_items,
                    n_nodes=n_nodes, bipartite=bipartite, feature_names=[],
                    queries=np.zeros(0, np.int64), targets=np.zeros(0, np.int64),
                    live=np.ones(n_items, bool) if live is None else live, src=src, dst=dst,
                    weight=w)


def _random_bipartite(n_items=25, n_users=40, n=300, seed=3, live=None):
    g = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(g.integers(0, n_users, n), g.integers(0, n_items, n))}
    u, i = map(np.array, zip(*sorted(pairs)))
    w = g.uniform(0.5, 3, len(u))
    return _data(u + n_items, i, n_items, n_items + n_users, weight=w, live=live), (u, i, w)


def _ease_reference(x: np.ndarray, relative_lambda: float) -> np.ndarray:
    """B straight from Steck's formula, in float64: X is contexts x items."""
    gram = x.T @ x
    lam = relative_lambda * np.diag(gram).mean()
    p = np.linalg.inv(gram + lam * np.eye(len(gram)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("bipartite", [True, False])
def test_ease_weights_and_ranking_match_the_closed_form(bipartite):
    n_items, n_users = 25, 40
    if bipartite:
        data, (u, i, w) = _random_bipartite(n_items, n_users)
        x = np.zeros((n_users, n_items))
        x[u, i] = w
    else:
        # Item-item edges: each item's contexts are its neighbours, both ways.
        g = np.random.default_rng(5)
        a, b = g.integers(0, n_items, 80), g.integers(0, n_items, 80)
        keep = a != b
        a, b = a[keep], b[keep]
        wt = g.uniform(0.5, 2, len(a))
        data = _data(a, b, n_items, n_items, weight=wt, bipartite=False)
        x = np.zeros((n_items, n_items))
        np.add.at(x, (a, b), wt)
        np.add.at(x, (b, a), wt)
    expect = _ease_reference(x, 0.7)
    q = np.arange(n_items)
    got = baselines.ease_rows(baselines.ease_inverse(data, 0.7), q)
    assert np.allclose(got, expect, rtol=1e-4, atol=1e-5 * np.abs(expect).max())
    assert not np.allclose(expect, expect.T)           # B is not symmetric: row vs column matters
    top = baselines.ease(data, q, 6, relative_lambda=0.7)
    scores = expect.copy()
    scores[q, q] = -np.inf
    assert top.tolist() == np.argsort(-scores, axis=1, kind="stable")[:, :6].tolist()


def test_ease_ranks_live_items_only_and_pads():
    live = np.ones(25, bool)
    live[[3, 7]] = False
    data, _ = _random_bipartite(live=live)
    q = np.array([0, 5, 24])
    top = baselines.ease(data, q, 30, relative_lambda=1.0)
    assert top.shape == (3, 30)
    for row, query in zip(top, q):
        kept = row[row >= 0]
        # Every live item but the query, then -1 padding.
        assert sorted(kept.tolist()) == sorted(set(np.flatnonzero(live)) - {query})
        assert (row[len(kept):] == -1).all()


def test_a_baseline_too_big_for_its_limit_is_skipped_with_a_note(make_cfg):
    data, _ = _random_bipartite()
    cfg = make_cfg("eval.baselines=[popularity,ease]", "eval.ease_max_items=20")
    notes: dict[str, str] = {}
    methods = _methods(cfg, data, 10, notes)
    assert list(methods) == ["popularity"]
    assert notes == {"ease": "skipped: 25 items > eval.ease_max_items=20 "
                             "(EASE inverts a dense items x items matrix)"}
    methods = _methods(make_cfg("eval.baselines=[ease]"), data, 10, notes := {})
    assert list(methods) == ["ease"] and notes == {}


def _two_communities(bipartite: bool):
    """Items 0-9 and 10-19, each community dense inside, joined by a single bridge."""
    g = np.random.default_rng(0)
    if bipartite:
        # Users 20-39: the first ten rate six of items 0-9 each, the others six of 10-19.
        src, dst = [], []
        for u in range(20):
            base = 0 if u < 10 else 10
            for i in (u + g.permutation(10)[:6]) % 10:
                src.append(20 + u)
                dst.append(base + i)
        src.append(20)                                  # the bridge: user 20 also rates item 15
        dst.append(15)
        return _data(src, dst, 20, 40)
    a, b = [], []
    for base in (0, 10):
        for i in range(10):
            for j in g.choice(10, 4, replace=False):
                if i != j:
                    a.append(base + i)
                    b.append(base + j)
    a.append(4)
    b.append(14)                                        # the bridge
    return _data(a, b, 20, 20, bipartite=False)


def _check_communities(top: np.ndarray, q: np.ndarray, k: int):
    assert top.shape == (len(q), k) and top.dtype == np.int64
    assert not (top == q[:, None]).any()
    assert (top >= 0).all()                             # 19 candidates, k of them returned
    assert ((top < 10) == (q[:, None] < 10)).all()      # each item's neighbours: its own community


@pytest.mark.parametrize("bipartite", [True, False])
def test_node2vec_neighbours_come_from_the_same_community(bipartite):
    data = _two_communities(bipartite)
    q = np.arange(20)
    kw = dict(dim=16, walks_per_item=20, walk_length=10, window=3, epochs=20, seed=0)
    top = baselines.node2vec(data, q, 5, **kw)
    _check_communities(top, q, 5)
    assert np.array_equal(top, baselines.node2vec(data, q, 5, **kw))   # seeded, one worker


@pytest.mark.parametrize("bipartite", [True, False])
def test_lightgcn_neighbours_come_from_the_same_community(bipartite):
    data = _two_communities(bipartite)
    q = np.arange(20)
    state = torch.random.get_rng_state()
    kw = dict(dim=16, layers=2, epochs=20, max_steps=1000, lr=0.1, batch_size=256, seed=0)
    top = baselines.lightgcn(data, q, 5, **kw)
    _check_communities(top, q, 5)
    assert np.array_equal(top, baselines.lightgcn(data, q, 5, **kw))
    assert torch.equal(state, torch.random.get_rng_state())    # the caller's RNG untouched


def test_graph_baselines_leave_out_removed_items():
    live = np.ones(20, bool)
    live[[2, 12]] = False
    data = _two_communities(True)
    data.live = live
    q = np.array([0, 11])
    for top in (baselines.node2vec(data, q, 18, dim=8, walks_per_item=5, walk_length=5,
                                   window=2, epochs=1, seed=0),
                baselines.lightgcn(data, q, 18, dim=8, layers=1, epochs=1, max_steps=1, lr=0.01,
                                   batch_size=64, seed=0)):
        assert not np.isin(top, [2, 12]).any() and not (top == q[:, None]).any()
        assert (top[:, :17] >= 0).all() and (top[:, 17] == -1).all()   # 17 candidates


def test_item_knn_bm25_is_the_dot_product_of_bm25_weighted_vectors():
    data, (u, i, w) = _random_bipartite()
    n_items, n_users = 25, 40
    x = np.zeros((n_items, n_users))             # items are BM25's documents, users its terms
    x[i, u] = w
    k1, b = baselines.BM25_K1, 0.9
    idf = np.log(n_items) - np.log1p((x > 0).sum(axis=0))
    length = x.sum(axis=1)
    norm = (1 - b) + b * length / length.mean()
    weighted = np.where(x > 0, x * (k1 + 1) / (k1 * norm[:, None] + x) * idf[None, :], 0.0)
    sims = weighted @ weighted.T
    q = np.arange(n_items)
    sims[q, q] = -np.inf
    top = baselines.item_knn(data, q, 5, similarity="bm25", bm25_b=b)
    for row, got in zip(sims, top):
        expect = [j for j in np.argsort(-row, kind="stable")[:5] if row[j] > 0]
        assert got[:len(expect)].tolist() == expect
    assert not np.array_equal(top, baselines.item_knn(data, q, 5, similarity="cosine", bm25_b=b))


def test_node2vec_budget_cuts_epochs_then_walks():
    # 1,000 items x 10 walks x 20 tokens = 200k tokens an epoch.
    assert baselines.node2vec_budget(1000, 10, 19, 5, 10**6) == (10, 5)
    assert baselines.node2vec_budget(1000, 10, 19, 5, 500_000) == (10, 2)
    assert baselines.node2vec_budget(1000, 10, 19, 5, 100_000) == (5, 1)
    assert baselines.node2vec_budget(1000, 10, 19, 5, 10) == (1, 1)


def test_lightgcn_stops_after_max_steps_and_the_cuts_are_noted(make_cfg):
    data = _two_communities(True)                       # 61 positives: one minibatch of 256
    q = np.arange(20)
    kw = dict(dim=8, layers=1, lr=0.05, batch_size=256, seed=0)
    three = baselines.lightgcn(data, q, 5, epochs=3, max_steps=100, **kw)
    assert np.array_equal(three, baselines.lightgcn(data, q, 5, epochs=10, max_steps=3, **kw))
    assert not np.array_equal(three, baselines.lightgcn(data, q, 5, epochs=10, max_steps=4, **kw))
    cfg = make_cfg("eval.baselines=[node2vec,lightgcn]", "eval.lightgcn_epochs=10",
                   "eval.lightgcn_max_steps=4", "eval.node2vec_walks=10",
                   "eval.node2vec_walk_length=9", "eval.node2vec_epochs=5",
                   "eval.node2vec_max_tokens=4000")
    notes: dict[str, str] = {}
    assert list(_methods(cfg, data, 10, notes)) == ["node2vec", "lightgcn"]
    # 20 items x 10 walks x 10 tokens = 2,000 tokens an epoch: 2 of 5 epochs fit.
    assert notes == {
        "node2vec": "cut to 2 of 5 epochs, 10 of 10 walks per item, to fit "
                    "eval.node2vec_max_tokens=4,000",
        "lightgcn": "stopped after eval.lightgcn_max_steps=4 minibatches, 4.0 of 10 epochs"}
