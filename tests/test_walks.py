"""The neighbourhood kernel (expected walk visits) and the walk primitives against exact computations (no Spark)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.sampling import ppr, rng
from pipeline.sampling.walks import alias_rows


def power_iteration(src, dst, weight, n_items, n_nodes, bipartite, alpha, length):
    """Expected visits per walk from every item, sum_k (1-alpha)^k P^k, densely (start included)."""
    A = np.zeros((n_nodes, n_nodes))
    for s, d, w in zip(src, dst, weight):
        A[s, d] += w
        A[d, s] += w
    P = np.divide(A, A.sum(1, keepdims=True), out=np.zeros_like(A), where=A.sum(1, keepdims=True) > 0)
    hop = (P @ P) if bipartite else P
    v = np.eye(n_nodes)[:n_items]
    total = np.zeros((n_items, n_nodes))
    for _ in range(length):
        v = (1 - alpha) * v @ hop
        total += v
    return total[:, :n_items]


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


def popular_bipartite(n_items=40, n_users=60, per_user=6, seed=0):
    """Unit-weight user -> item edges with popularity skew: hubs, ties among rare items."""
    g = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    pairs = {(n_items + u, int(i)) for u in range(n_users)
             for i in g.choice(n_items, per_user, replace=False, p=p / p.sum())}
    src, dst = map(np.array, zip(*sorted(pairs)))
    return dict(src=src, dst=dst, weight=np.ones(len(src)), n_items=n_items,
                n_nodes=n_items + n_users, bipartite=True)


def transitions(g):
    return ppr.transitions(g["src"], g["dst"], g["weight"], g["n_nodes"], g["n_items"],
                           g["bipartite"])


def dense(visits, n_items):
    return visits.toarray().astype(np.float64)[:, :n_items] / ppr.ONE


@pytest.mark.parametrize("graph", [BIPARTITE, HOMOGENEOUS, popular_bipartite()],
                         ids=["bipartite", "homogeneous", "popular"])
@pytest.mark.parametrize("alpha,length", [(0.3, 3), (0.5, 1), (0.15, 30)])
def test_unpruned_visits_are_the_exact_expectation(graph, alpha, length):
    t = transitions(graph)
    starts = np.arange(graph["n_items"])
    visits, _ = ppr.propagate(t, starts, walk_length=length, restart_prob=alpha, push_threshold=0.0)
    expected = power_iteration(**graph, alpha=alpha, length=length)
    # Integer mass in units of 2^-56: exact but for a floor per push, of up to a strength's
    # worth of units (2^16 per unit of weight where weights are not integers, as in BIPARTITE).
    atol = 1e-9 if t.scale != 1.0 else 1e-12
    np.testing.assert_allclose(dense(visits, graph["n_items"]), expected, rtol=0, atol=atol)
    reference = ppr.exact_visits(t, starts, walk_length=length, restart_prob=alpha)
    np.testing.assert_allclose(reference.toarray(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.003, 0.03, 0.1])
def test_pruning_only_drops_mass_within_its_bound_and_bounds_the_work(eps):
    g = popular_bipartite(n_items=60, n_users=120, per_user=8)
    t = transitions(g)
    starts = np.arange(g["n_items"])
    alpha, length = 0.5, 3
    exact = power_iteration(**g, alpha=alpha, length=length)
    full, full_work = ppr.propagate(t, starts, walk_length=length, restart_prob=alpha,
                                    push_threshold=0.0)
    approx, work = ppr.propagate(t, starts, walk_length=length, restart_prob=alpha,
                                 push_threshold=eps)
    lost = exact - dense(approx, g["n_items"])
    bound = (ppr.error_factor(length, alpha, True) * eps * t.strength[:g["n_items"]][None, :]
             / np.maximum(t.deg[starts], 1)[:, None])
    assert lost.min() > -1e-12 and (lost <= bound + 1e-12).all()
    assert lost.max() > 1e-6                      # it did prune
    # Each half hop pushes along at most deg(start)/eps edges; and less than unpruned.
    assert (work <= 2 * length * t.deg[starts] / eps).all()
    assert work.sum() < full_work.sum()


def test_a_hub_is_pushed_only_while_it_holds_much_of_the_mass():
    # Item 0 is linked to every other item (a libc6); items 1-40 form a ring besides.
    n = 41
    src = np.concatenate([np.zeros(n - 1, np.int64), np.arange(1, n)])
    dst = np.concatenate([np.arange(1, n), np.r_[np.arange(2, n), 1]])
    t = ppr.transitions(src, dst, np.ones(len(src)), n, n, False)
    starts = np.arange(1, n)
    exact, exact_work = ppr.propagate(t, starts, walk_length=3, restart_prob=0.5, push_threshold=0.0)
    _, work = ppr.propagate(t, starts, walk_length=3, restart_prob=0.5, push_threshold=0.05)
    # From a ring item, the hub gets a third of the mass but has 40 edges to its 3: not pushed.
    assert (exact_work >= 40).all() and (work < 40).all()
    _, hub_work = ppr.propagate(t, np.array([0]), walk_length=3, restart_prob=0.5,
                                push_threshold=0.05)
    assert 40 <= hub_work[0] <= 3 * 40 / 0.05            # L half hops of deg(s) / ε


def brute_force_top(score_row, start, seed, k):
    """Items by score descending, equal scores by rng.pair_key(seed, start, item); the start never."""
    items = [i for i in np.flatnonzero(score_row > 0) if i != start]
    tie = {i: int(rng.pair_key(seed, np.array([start]), np.array([i]))[0]) for i in items}
    return sorted(items, key=lambda i: (-score_row[i], tie[i]))[:k]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_neighbours_are_the_top_of_the_exact_score(beta):
    g = popular_bipartite()
    t = transitions(g)
    starts = np.arange(g["n_items"])
    visits, _ = ppr.propagate(t, starts, walk_length=3, restart_prob=0.5, push_threshold=0.0)
    r = ppr.rank_starts(t, starts, visits, degree_exponent=beta, seed=4, num_neighbors=5,
                        window=(5, 8), num_hard=2)
    # Brute force on the integer masses (exact ties stay ties), the same score expression.
    mass = visits.toarray()[:, :g["n_items"]]
    score = ppr.scores(mass, np.broadcast_to(t.strength[:g["n_items"]], mass.shape), beta)
    for s in starts:
        got = list(r.neighbors[r.nbr_offsets[s]:r.nbr_offsets[s + 1]])
        assert got == brute_force_top(score[s], s, 4, 5)
        top = np.array([score[s, i] for i in got])
        np.testing.assert_allclose(r.weights[r.nbr_offsets[s]:r.nbr_offsets[s + 1]],
                                   top / top.sum(), rtol=1e-6)
        order = brute_force_top(score[s], s, 4, 8)
        avail = max(len(order) - 5, 0)
        take = min(avail, 2)
        picks = [order[5 + i * avail // take] for i in range(take)]
        assert list(r.hard[r.hard_offsets[s]:r.hard_offsets[s + 1]]) == picks


def test_tie_breaking_is_independent_of_node_numbering():
    g = popular_bipartite(n_items=30, n_users=25, per_user=4, seed=0)
    n = g["n_items"]
    kw = dict(degree_exponent=0.7, seed=0, num_neighbors=4, window=(4, 10), num_hard=3)
    t = transitions(g)
    starts = np.arange(n)
    visits, _ = ppr.propagate(t, starts, walk_length=3, restart_prob=0.5, push_threshold=0.01)
    base = ppr.rank_starts(t, starts, visits, **kw)
    # Exact ties among the ranks written out (0 .. 9) here, so the tie rule decides.
    v = ppr.Visits.of(t, starts, visits)
    score = ppr.scores(v.mass, v.strength, 0.7)
    tied = 0
    for s in starts:
        row = np.sort(score[(v.owner == s) & (v.item != s)])[::-1][:10]
        tied += bool((np.diff(row) == 0).any())
    assert tied >= 5
    # Renumber the items; identities (the original numbers) travel with them.
    perm = np.random.default_rng(1).permutation(n)
    back = np.argsort(perm)
    relabelled = dict(g, dst=perm[g["dst"]])
    t2 = transitions(relabelled)
    visits2, _ = ppr.propagate(t2, perm[starts], walk_length=3, restart_prob=0.5,
                               push_threshold=0.01)
    v2 = ppr.Visits.of(t2, perm[starts], visits2)
    r2 = ppr.rank(starts, v2.owner, v2.item, back[v2.item], v2.mass, v2.strength, **kw)
    for field in ("nbr_offsets", "hard_offsets"):
        np.testing.assert_array_equal(getattr(r2, field), getattr(base, field))
    np.testing.assert_array_equal(back[r2.neighbors], base.neighbors)
    np.testing.assert_array_equal(back[r2.hard], base.hard)
    np.testing.assert_array_equal(r2.weights, base.weights)
    # Another seed moves tied items only: rank by rank, the scores are the same.
    other = ppr.rank_starts(t, starts, visits, **{**kw, "seed": 1})
    assert not np.array_equal(other.neighbors, base.neighbors)
    score_of = dict(zip(zip(v.owner.tolist(), v.item.tolist()), score.tolist()))
    owners = np.repeat(starts, np.diff(base.nbr_offsets))
    for r in (base, other):
        np.testing.assert_array_equal(np.diff(r.nbr_offsets), np.diff(base.nbr_offsets))
    np.testing.assert_array_equal([score_of[o, i] for o, i in zip(owners, other.neighbors)],
                                  [score_of[o, i] for o, i in zip(owners, base.neighbors)])


def test_chunks_and_start_order_do_not_change_a_neighbourhood(monkeypatch):
    g = popular_bipartite()
    t = transitions(g)
    kw = dict(walk_length=3, restart_prob=0.5, push_threshold=0.01, degree_exponent=0.7, seed=3,
              num_neighbors=5, window=(5, 12), num_hard=3)

    def by_start(starts):
        out = {}
        for chunk, r, pushes in ppr.neighborhoods(t, starts, **kw):
            for i, s in enumerate(chunk):
                out[int(s)] = (r.neighbors[r.nbr_offsets[i]:r.nbr_offsets[i + 1]].tolist(),
                               r.weights[r.nbr_offsets[i]:r.nbr_offsets[i + 1]].tolist(),
                               r.hard[r.hard_offsets[i]:r.hard_offsets[i + 1]].tolist(),
                               int(pushes[i]))
        return out

    whole = by_start(np.arange(g["n_items"]))
    monkeypatch.setattr(ppr, "CHUNK_STARTS", 7)
    assert by_start(np.random.default_rng(0).permutation(g["n_items"])) == whole
    assert by_start(np.array([13])) == {13: whole[13]}


@pytest.mark.parametrize("n", [1, 2, 10, 997, 1000, 30_000])
def test_spread_order_is_a_permutation_that_mixes_the_id_range(n):
    order = ppr.spread_order(n)
    assert np.array_equal(np.sort(order), np.arange(n))
    if n % 100 == 0:   # each tenth of the order takes about a tenth of every tenth of the ids
        counts = np.stack([np.bincount(part * 10 // n, minlength=10)
                           for part in order.reshape(10, -1)])
        assert counts.min() >= 0.5 * n / 100 and counts.max() <= 1.5 * n / 100


def test_isolated_items_have_no_neighbours():
    t = transitions(HOMOGENEOUS)
    visits, pushes = ppr.propagate(t, np.arange(7), walk_length=3, restart_prob=0.2,
                                   push_threshold=0.0)
    assert visits[6].nnz == 0 and pushes[6] == 0
    r = ppr.rank_starts(t, np.arange(7), visits, degree_exponent=0.5, seed=0, num_neighbors=3,
                        window=(3, 5), num_hard=1)
    assert r.nbr_offsets[7] == r.nbr_offsets[6] and 6 not in r.neighbors[:r.nbr_offsets[6]]
    for s in range(6):   # the start is never its own neighbour
        assert s not in r.neighbors[r.nbr_offsets[s]:r.nbr_offsets[s + 1]]


def test_weights_become_integers_without_losing_ratios():
    assert ppr.scale_of(np.array([1.0, 2.0, 5.0])) == 1.0
    np.testing.assert_array_equal(ppr.integer_weights(np.array([1.0, 2.0, 0.0]), 1.0), [1, 2, 0])
    s = ppr.scale_of(np.array([0.5, 1.5, 3.0]))
    assert s == 2.0 ** 14                # a power of two: binary fractions stay exact
    w = ppr.integer_weights(np.array([0.5, 1.5, 3.0, 0.1, 1e-9]), s)
    np.testing.assert_array_equal(w, [8192, 24576, 49152, 1638, 1])   # a tiny weight stays an edge
    t = ppr.transitions(np.array([2, 2, 3]), np.array([0, 1, 1]), np.array([1.0, 0.0, 2.0]),
                        4, 2, True)
    assert t.deg.tolist() == [1, 1, 1, 1] and t.strength.tolist() == [1, 2, 1, 2]


def test_quality_reports_agreement_overlap_and_the_bound():
    g = popular_bipartite(n_items=60, n_users=120, per_user=8)
    t = transitions(g)
    starts = np.arange(0, 60, 3)
    kw = dict(degree_exponent=0.5, num_neighbors=5, window=(5, 10), num_hard=0)
    exact = ppr.Visits.of(t, starts, ppr.propagate(t, starts, walk_length=3, restart_prob=0.5,
                                                   push_threshold=0.0)[0])
    q = ppr.quality(*ppr.quality_per_start(exact, exact, t.deg[starts], seed=0,
                                           push_threshold=0.0, factor=1.0, **kw))
    assert q["exact_overlap"] == 1.0 and q["max_error_over_bound"] == 0.0
    assert 0.5 < q["seed_agreement"] <= 1.0
    approx = ppr.Visits.of(t, starts, ppr.propagate(t, starts, walk_length=3, restart_prob=0.5,
                                                    push_threshold=0.1)[0])
    q = ppr.quality(*ppr.quality_per_start(approx, exact, t.deg[starts], seed=0,
                                           push_threshold=0.1,
                                           factor=ppr.error_factor(3, 0.5, True), **kw))
    assert q["exact_overlap"] < 1.0 and 0 < q["max_error_over_bound"] <= 1.0
    assert ppr.power_iteration_error(t, exact, walk_length=3, restart_prob=0.5) < 1e-12


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


def test_hard_window_scales_with_catalogue_and_skips_top_t():
    assert ppr.hard_window(1_000_000, 0.002, 0.005, 10) == (2000, 5000)
    assert ppr.hard_window(100, 0.0, 0.05, 10) == (10, 11)
