"""The random-walk kernel, shared by both execution modes.

Nodes: items are ``0 .. n_items-1`` (ingest numbers them first), users follow.
A *half hop* moves to a neighbour drawn in proportion to edge weight with
Walker's alias method, so a draw costs two random numbers and two array
reads whatever the degree. On a bipartite graph a hop is two half hops
(item -> user -> item); on an item-item graph it is one.

A walk from item ``s`` runs at most ``walk_length`` hops; before each hop it
stops with probability ``restart_prob`` (the next walk restarts from ``s``).
The expected visit counts are thus the personalised PageRank of ``s``
truncated at ``walk_length`` terms, which the tests check exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.sampling import rng


@dataclass
class CSR:
    """Adjacency with alias tables; row ``v`` is ``indptr[v]:indptr[v+1]``."""

    indptr: np.ndarray           # int64, n_nodes + 1
    nbrs: np.ndarray             # neighbour of each slot (int32 when ids fit)
    prob: np.ndarray | None      # float64 alias acceptance per slot; None: unweighted
    alias: np.ndarray | None     # neighbour taken when the slot is rejected
    n_items: int
    bipartite: bool

    @property
    def deg(self) -> np.ndarray:
        return np.diff(self.indptr)


def alias_rows(weights: np.ndarray, indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row alias tables (Vose): acceptance probabilities and alias slots (row-relative).

    Rows whose weights are all equal (unweighted graphs) are done vectorised;
    only genuinely weighted rows pay for the per-row loop.
    """
    prob = np.ones(len(weights), dtype=np.float64)
    alias = np.arange(len(weights), dtype=np.int64) - np.repeat(indptr[:-1], np.diff(indptr))
    nonempty = np.flatnonzero(np.diff(indptr) > 0)
    if len(weights) == 0:
        return prob, alias
    lo = np.minimum.reduceat(weights, indptr[nonempty])
    hi = np.maximum.reduceat(weights, indptr[nonempty])
    for row in nonempty[lo != hi]:
        a, b = indptr[row], indptr[row + 1]
        p, al = _vose(weights[a:b])
        prob[a:b], alias[a:b] = p, al
    return prob, alias


def _vose(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = len(w)
    scaled = w.astype(np.float64) * (k / w.sum())
    prob = np.ones(k, dtype=np.float64)
    alias = np.arange(k, dtype=np.int64)
    small = [i for i in range(k) if scaled[i] < 1.0]
    large = [i for i in range(k) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def _sorted_by(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether pairs ``(a, b)`` are in ascending lexicographic order."""
    if len(a) < 2:
        return True
    da, db = np.diff(a), np.diff(b)
    return bool(np.all((da > 0) | ((da == 0) & (db >= 0))))


def build_csr(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_nodes: int,
              n_items: int, bipartite: bool) -> CSR:
    """Walkable adjacency from an edge list: both directions, duplicates merged.

    Bipartite edges are user -> item and are walked both ways; item-item edges
    are treated as undirected. Rows are sorted by neighbour id so that both
    execution modes build identical alias tables.
    """
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    weight = np.asarray(weight, np.float64)
    if not _sorted_by(src, dst):
        order = np.argsort(src * np.int64(n_nodes) + dst, kind="stable")
        src, dst, weight = src[order], dst[order], weight[order]
    if bipartite:
        # Items (all destinations) are numbered below users (all sources), so
        # the item rows come first: a stable sort of the destinations gives
        # them, each with its users ascending; the user rows are the input,
        # already in (src, dst) order.
        rev = np.argsort(dst, kind="stable")
        a = np.concatenate([dst[rev], src])
        b = np.concatenate([src[rev], dst])
        w = np.concatenate([weight[rev], weight])
    else:
        a = np.concatenate([src, dst])
        b = np.concatenate([dst, src])
        order = np.argsort(a * np.int64(n_nodes) + b, kind="stable")
        a, b, w = a[order], b[order], np.concatenate([weight, weight])[order]
    dup = (a[1:] == a[:-1]) & (b[1:] == b[:-1]) if len(a) else np.zeros(0, bool)
    if dup.any():
        starts = np.flatnonzero(np.concatenate([[True], ~dup]))
        w = np.add.reduceat(w, starts)
        a, b = a[starts], b[starts]
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n_nodes), out=indptr[1:])
    prob, alias_rel = alias_rows(w, indptr)
    nbrs = b.astype(np.int32) if n_nodes < 2**31 else b
    if np.all(prob == 1.0):
        # Every row is uniform: a draw is one slot, no acceptance test; and the
        # broadcast carries a third of the bytes.
        return CSR(indptr, nbrs, None, None, n_items, bipartite)
    alias_nbr = nbrs[np.repeat(indptr[:-1], np.diff(indptr)) + alias_rel]
    return CSR(indptr, nbrs, prob, alias_nbr, n_items, bipartite)


def draw(keys: np.ndarray, step: int, half: int, deg: np.ndarray, weighted: bool = True
         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Slot and alias acceptance draw of one half hop: ``(slot in row, uniform or None)``.

    One 64-bit hash: its high half picks the slot, its low half the acceptance.
    """
    h = rng.bits(keys, rng.counter(step, half, rng.PICK))
    return rng.slot(h, deg), (rng.unit(h) if weighted else None)


def keep_going(keys: np.ndarray, step: int, restart_prob: float) -> np.ndarray:
    return ~rng.below(rng.bits(keys, rng.counter(step, 0, rng.STOP)), restart_prob)


def walk(csr: CSR, starts: np.ndarray, num_walks: int, walk_length: int,
         restart_prob: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk from every start; returns ``(owner, visited)``: index into ``starts``, item visited.

    The start itself is never recorded, even when a walk comes back to it.
    """
    starts = np.asarray(starts, dtype=np.int64)
    owner = np.repeat(np.arange(len(starts), dtype=np.int64), num_walks)
    keys = rng.walker_keys(seed, starts[owner],
                           np.tile(np.arange(num_walks, dtype=np.int64), len(starts)))
    indptr = csr.indptr
    alive = indptr[starts + 1] > indptr[starts]
    live = alive[owner]
    owner, keys = owner[live], keys[live]
    cur = starts[owner]
    out_owner, out_visit = [], []
    for step in range(1, walk_length + 1):
        go = keep_going(keys, step, restart_prob)
        owner, keys, cur = owner[go], keys[go], cur[go]
        if len(cur) == 0:
            break
        for half in range(2 if csr.bipartite else 1):
            lo = indptr[cur]
            slot, accept = draw(keys, step, half, indptr[cur + 1] - lo,
                                weighted=csr.prob is not None)
            e = lo + slot
            if csr.prob is None:
                cur = csr.nbrs[e].astype(np.int64)
            else:
                cur = np.where(accept < csr.prob[e], csr.nbrs[e], csr.alias[e]).astype(np.int64)
        away = cur != starts[owner]
        out_owner.append(owner[away])
        out_visit.append(cur[away])
    if not out_owner:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_owner), np.concatenate(out_visit)


def count_visits(owner: np.ndarray, visited: np.ndarray, n_items: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(owner, item, count)`` for every distinct visit, sorted by (owner, item)."""
    key = owner * np.int64(n_items) + visited
    if len(key) and int(key.max()) < 2**31:
        key = key.astype(np.int32)  # sorting half the bytes is markedly faster
    key, counts = np.unique(key, return_counts=True)
    key = key.astype(np.int64)
    return key // n_items, key % n_items, counts.astype(np.int64)


@dataclass
class Ranked:
    """Per start (in the order given): top-T neighbours and hard-negative candidates."""

    nbr_offsets: np.ndarray   # int64, n_starts + 1
    neighbors: np.ndarray     # int64
    weights: np.ndarray       # float32, visit count / total count of the kept neighbours
    hard_offsets: np.ndarray  # int64, n_starts + 1
    hard: np.ndarray          # int64


def hard_window(n_items: int, lo_frac: float, hi_frac: float, num_neighbors: int) -> tuple[int, int]:
    """Visit ranks ``[lo, hi)`` from which hard negatives come, scaled to the catalogue.

    PinSage took ranks 2000-5000 of billions of items; here the window is a
    fraction of the catalogue, but never overlaps the top-T neighbours.
    """
    lo = max(num_neighbors, int(np.floor(lo_frac * n_items)))
    hi = max(lo + 1, int(np.ceil(hi_frac * n_items)))
    return lo, hi


def rank_visits(n_starts: int, owner: np.ndarray, item: np.ndarray, count: np.ndarray,
                num_neighbors: int, window: tuple[int, int], num_hard: int) -> Ranked:
    """Top ``num_neighbors`` items by visit count (ties by node id) and hard candidates.

    Hard candidates: up to ``num_hard`` items at evenly spaced ranks of the
    ``window`` of the visit ranking.
    """
    # By owner, then count descending, then item: one stable sort on a packed
    # key, since (owner, item) order is kept among equal keys.
    if not _sorted_by(owner, item):
        order = np.lexsort((item, owner))
        owner, item, count = owner[order], item[order], count[order]
    order = np.argsort((owner << 32) | (np.int64(2**31 - 1) - np.minimum(count, 2**31 - 1)),
                       kind="stable")
    owner, item, count = owner[order], item[order], count[order]
    first = np.searchsorted(owner, np.arange(n_starts + 1))
    rank = np.arange(len(owner)) - first[owner]
    top = rank < num_neighbors
    kept_owner = owner[top]
    kept_counts = count[top]
    totals = np.bincount(kept_owner, weights=kept_counts, minlength=n_starts)
    weights = (kept_counts / totals[kept_owner]).astype(np.float32)
    nbr_offsets = np.zeros(n_starts + 1, dtype=np.int64)
    np.cumsum(np.bincount(kept_owner, minlength=n_starts), out=nbr_offsets[1:])

    lo, hi = window
    visited = np.diff(first)
    avail = np.clip(np.minimum(visited, hi) - lo, 0, None)
    take = np.minimum(avail, num_hard)
    # The i-th of `take` picks sits at rank lo + floor(i * avail / take).
    h_owner = np.repeat(np.arange(n_starts, dtype=np.int64), take)
    h_i = np.arange(len(h_owner)) - np.repeat(np.cumsum(take) - take, take)
    h_rank = lo + (h_i * avail[h_owner]) // np.maximum(take[h_owner], 1)
    hard = item[first[h_owner] + h_rank]
    hard_offsets = np.zeros(n_starts + 1, dtype=np.int64)
    np.cumsum(take, out=hard_offsets[1:])
    return Ranked(nbr_offsets, item[top], weights, hard_offsets, hard)
