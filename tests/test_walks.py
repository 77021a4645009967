"""The NumPy walk kernel against exact computations (no Spark)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.sampling import rng
from pipeline.sampling.walks import (alias_rows, build_csr, count_visits, hard_window, rank_visits,
                                     walk)


def exact_visits(src, dst, weight, n_items, n_nodes, bipartite, start, alpha, length):
    """Expected visits per walk: sum_k (1-alpha)^k P^k, by power iteration (dense)."""
    A = np.zeros((n_nodes, n_nodes))
    for s, d, w in zip(src, dst, weight):
        A[s, d] += w
        A[d, s] += w
    P = np.divide(A, A.sum(1, keepdims=True), out=np.zeros_like(A), where=A.sum(1, keepdims=True) > 0)
    hop = (P @ P) if bipartite else P
    v = np.zeros(n_nodes)
    v[start] = 1.0
    total = np.zeros(n_nodes)
    for _ in range(length):
        v = (1 - alpha) * v @ hop
        total += v
    total[start] = 0.0
    return total[:n_items]


BIPARTITE = dict(  # 6 items (0-5), 4 users (6-9), weighted
    src=np.array([6, 6, 6, 7, 7, 8, 8, 9, 9, 9]),
    dst=np.array([0, 1, 2, 1, 3, 3, 4, 4, 5, 0]),
    weight=np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 4.0, 2.0, 1.0, 1.5]),
    n_items=6, n_nodes=10, bipartite=True)
HOMOGENEOUS = dict(  # 7 items, a ring plus chords, one isolated item (6)
    src=np.array([0, 1, 2, 3, 4, 5, 0, 1]),
    dst=np.array([1, 2, 3, 4, 5, 0, 3, 4]),
    weight=np.array([1.0, 1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 0.5]),
    n_items=7, n_nodes=7, bipartite=False)


@pytest.mark.parametrize("graph", [BIPARTITE, HOMOGENEOUS], ids=["bipartite", "homogeneous"])
@pytest.mark.parametrize("alpha,length", [(0.3, 3), (0.15, 30)])
def test_visit_frequencies_match_exact_ppr(graph, alpha, length):
    g = dict(graph)
    csr = build_csr(g["src"], g["dst"], g["weight"], g["n_nodes"], g["n_items"], g["bipartite"])
    walks = 40_000
    for start in range(g["n_items"]):
        expected = exact_visits(**g, start=start, alpha=alpha, length=length)
        owner, visited = walk(csr, np.array([start]), walks, length, alpha, seed=11)
        _, item, count = count_visits(owner, visited, g["n_items"])
        got = np.zeros(g["n_items"])
        got[item] = count / walks
        # Visits per walk are bounded by the walk length; 40k walks give a
        # standard error under 0.02 for these graphs; 0.06 is 3+ sigma.
        np.testing.assert_allclose(got, expected, atol=0.06 if length > 3 else 0.02)
        # Where the exact ranking is clear (gaps > 10% of the top value), the ranks agree.
        order = np.argsort(-expected, kind="stable")
        for a, b in zip(order, order[1:]):
            if expected[a] - expected[b] > 0.1 * expected[order[0]]:
                assert got[a] > got[b], (start, a, b, got, expected)


def test_top_t_agrees_with_exact_ppr_ranking():
    g = dict(BIPARTITE)
    csr = build_csr(g["src"], g["dst"], g["weight"], g["n_nodes"], g["n_items"], True)
    owner, visited = walk(csr, np.arange(6), 20_000, 4, 0.3, seed=5)
    o, item, count = count_visits(owner, visited, 6)
    r = rank_visits(6, o, item, count, 2, (2, 3), 1)
    for start in range(6):
        expected = exact_visits(**g, start=start, alpha=0.3, length=4)
        top = list(r.neighbors[r.nbr_offsets[start]:r.nbr_offsets[start + 1]])
        exact_top = list(np.argsort(-expected, kind="stable")[:2])
        assert top == exact_top, (start, top, expected)


def test_isolated_items_get_no_visits_and_walks_never_count_the_start():
    g = dict(HOMOGENEOUS)
    csr = build_csr(g["src"], g["dst"], g["weight"], 7, 7, False)
    owner, visited = walk(csr, np.arange(7), 500, 5, 0.2, seed=1)
    assert not np.any(owner == 6)
    assert not np.any(visited == owner)  # owner index == start node here


def test_walks_depend_only_on_seed_start_and_walk_index():
    g = dict(BIPARTITE)
    csr = build_csr(g["src"], g["dst"], g["weight"], 10, 6, True)
    a_owner, a_vis = walk(csr, np.array([0, 1, 2, 3, 4, 5]), 50, 3, 0.5, seed=9)
    parts = [walk(csr, np.array([s]), 50, 3, 0.5, seed=9) for s in (3, 0, 5)]
    a = count_visits(a_owner, a_vis, 6)
    for pos, s in enumerate((3, 0, 5)):
        _, item, count = count_visits(*parts[pos], 6)
        mine = a[0] == s
        np.testing.assert_array_equal(a[1][mine], item)
        np.testing.assert_array_equal(a[2][mine], count)
    other = count_visits(*walk(csr, np.arange(6), 50, 3, 0.5, seed=10), 6)
    assert not np.array_equal(a[2], other[2])


def test_alias_tables_reproduce_row_weights():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 0.1, 7.0, 2.0])
    indptr = np.array([0, 4, 6, 9])
    prob, alias = alias_rows(weights, indptr)
    for r in range(3):
        a, b = indptr[r], indptr[r + 1]
        k = b - a
        # Exact distribution implied by the table: slot i kept w.p. prob/k, else its alias.
        dist = np.zeros(k)
        for i in range(k):
            dist[i] += prob[a + i] / k
            dist[alias[a + i]] += (1 - prob[a + i]) / k
        np.testing.assert_allclose(dist, weights[a:b] / weights[a:b].sum(), rtol=1e-12)
    assert np.all(prob[4:6] == 1.0)  # an equal-weight row needs no aliases


def test_draws_are_uniform_and_uncorrelated_across_counters():
    keys = rng.walker_keys(0, np.arange(200_000), np.zeros(200_000, dtype=np.int64))
    h0, h1 = rng.bits(keys, 0), rng.bits(keys, 1)
    u0, u1 = rng.unit(h0), rng.unit(h1)
    assert 0 <= u0.min() and u0.max() < 1
    assert abs(u0.mean() - 0.5) < 0.005 and abs(np.corrcoef(u0, u1)[0, 1]) < 0.01
    slots = rng.slot(h0, np.full(len(h0), 7))
    assert slots.min() == 0 and slots.max() == 6
    np.testing.assert_allclose(np.bincount(slots) / len(slots), 1 / 7, atol=0.005)
    # High and low halves of one hash are independent draws.
    assert abs(np.corrcoef(slots, u0)[0, 1]) < 0.01
    assert abs(rng.below(h1, 0.3).mean() - 0.3) < 0.005


def test_rank_visits_ties_weights_and_hard_window():
    # start 0 visited: item 5 x4, items 3 and 2 x2 (tie -> lower id first), items 7, 8, 9, 1 x1.
    owner = np.zeros(7, dtype=np.int64)
    item = np.array([5, 3, 2, 7, 8, 9, 1])
    count = np.array([4, 2, 2, 1, 1, 1, 1])
    r = rank_visits(2, owner, item, count, 3, (3, 7), 2)
    assert list(r.nbr_offsets) == [0, 3, 3]          # start 1 has an empty neighbourhood
    assert list(r.neighbors) == [5, 2, 3]
    np.testing.assert_allclose(r.weights, [0.5, 0.25, 0.25])
    assert r.weights.dtype == np.float32 and r.weights.sum() == 1.0
    # Ranks 3..6 are items 1, 7, 8, 9; two evenly spaced picks: ranks 3 and 5.
    assert list(r.hard) == [1, 8] and list(r.hard_offsets) == [0, 2, 2]


def test_hard_window_scales_with_catalogue_and_skips_top_t():
    assert hard_window(1_000_000, 0.002, 0.005, 10) == (2000, 5000)
    assert hard_window(100, 0.0, 0.05, 10) == (10, 11)
