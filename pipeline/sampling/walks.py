"""Walk primitives: the walkable adjacency, alias tables, counter-based draws.

Nodes: items are ``0 .. n_items-1`` (ingest numbers them first), users follow.
A *half hop* moves to a neighbour drawn in proportion to edge weight with
Walker's alias method, so a draw costs two random numbers and two array
reads whatever the degree. On a bipartite graph a hop is two half hops
(item -> user -> item); on an item-item graph it is one. The importance
neighbourhoods do not sample walks: :mod:`pipeline.sampling.ppr` computes
their expected visits on the same adjacency (:func:`adjacency`).
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


def adjacency(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_nodes: int,
              bipartite: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, nbrs, weight)`` of the walkable graph: both directions, duplicates merged.

    Bipartite edges are user -> item and are walked both ways; item-item edges
    are treated as undirected. Rows are sorted by neighbour id, as in join mode.
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
    return indptr, (b.astype(np.int32) if n_nodes < 2**31 else b), w


def build_csr(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_nodes: int,
              n_items: int, bipartite: bool) -> CSR:
    """:func:`adjacency` with alias tables, for drawing walks."""
    indptr, nbrs, w = adjacency(src, dst, weight, n_nodes, bipartite)
    prob, alias_rel = alias_rows(w, indptr)
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


def walk_sequences(csr: CSR, starts: np.ndarray, num_walks: int, walk_length: int,
                   seed: int) -> np.ndarray:
    """Ordered walks without restart, for skip-gram (DeepWalk / node2vec with p = q = 1).

    Returns ``(num_walks * len(starts), walk_length + 1)`` item ids: row
    ``r * len(starts) + i`` is walk ``r`` from ``starts[i]``, the start first,
    then the item reached by each hop (item -> user -> item on a bipartite
    graph); ``-1`` fills a walk that cannot leave its start. Draws are
    counter-based (:mod:`pipeline.sampling.rng`), so a row depends only on
    (seed, start, r).
    """
    starts = np.asarray(starts, dtype=np.int64)
    start = np.tile(starts, num_walks)
    keys = rng.walker_keys(seed, start, np.repeat(np.arange(num_walks, dtype=np.int64),
                                                  len(starts)))
    out = np.full((len(start), walk_length + 1), -1, dtype=np.int64)
    out[:, 0] = start
    indptr = csr.indptr
    rows = np.flatnonzero(indptr[start + 1] > indptr[start])
    cur, keys = start[rows], keys[rows]
    for step in range(1, walk_length + 1):
        for half in range(2 if csr.bipartite else 1):
            lo = indptr[cur]
            slot, accept = draw(keys, step, half, indptr[cur + 1] - lo,
                                weighted=csr.prob is not None)
            e = lo + slot
            if csr.prob is None:
                cur = csr.nbrs[e].astype(np.int64)
            else:
                cur = np.where(accept < csr.prob[e], csr.nbrs[e], csr.alias[e]).astype(np.int64)
        out[rows, step] = cur
    return out
