"""Baselines, each built from the TRAINING graph only, each returning a top-K list.

Every function takes an :class:`~pipeline.evaluate.data.EvalData` and distinct
query items and returns a ``(len(queries), k)`` int64 array of item ids, best
first, the query excluded, ``-1`` padding a short list — exactly what the
metrics read, so every method is scored the same way.

* ``popularity``: the most interacted items (the same list for every query).
* ``random_walk``: Pixie-style: walks with restart from the query with the
  sampler's own kernel (:mod:`pipeline.sampling.walks`), items ranked by visits.
* ``item_knn``: cosine similarity of the items' interaction vectors
  (co-occurrence), with implicit's ``CosineRecommender``.
* ``als``: implicit's ``AlternatingLeastSquares`` item factors, ``similar_items``.
* ``features_only``: cosine of the input features, no graph at all.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from pipeline.evaluate import index as ann
from pipeline.evaluate.data import EvalData
from pipeline.evaluate.metrics import drop_query
from pipeline.sampling import walks

# Walkers per vectorised chunk of random_walk (the sampler's bound too).
CHUNK_WALKERS = 1 << 20


def popularity(data: EvalData, queries: np.ndarray, k: int) -> np.ndarray:
    ranked = np.argsort(-data.degree, kind="stable")[:k + 1]
    return drop_query(np.broadcast_to(ranked, (len(queries), len(ranked))), queries, k)


def random_walk(data: EvalData, queries: np.ndarray, k: int, *, num_walks: int, walk_length: int,
                restart_prob: float, seed: int) -> np.ndarray:
    """Items most visited by ``num_walks`` walks with restart from each query.

    Ties go to the lower node id; the start is never counted, so the query is
    excluded by construction.
    """
    csr = walks.build_csr(data.src, data.dst, data.weight, data.n_nodes, data.n_items,
                          data.bipartite)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    per_chunk = max(1, CHUNK_WALKERS // max(1, num_walks))
    for lo in range(0, len(queries), per_chunk):
        chunk = np.asarray(queries[lo:lo + per_chunk], dtype=np.int64)
        owner, visited = walks.walk(csr, chunk, num_walks, walk_length, restart_prob, seed)
        o, item, count = walks.count_visits(owner, visited, data.n_items)
        ranked = walks.rank_visits(len(chunk), o, item, count, k, (k, k + 1), 0)
        sizes = np.diff(ranked.nbr_offsets)
        rows = np.repeat(np.arange(len(chunk)), sizes)
        cols = np.arange(len(rows)) - np.repeat(ranked.nbr_offsets[:-1], sizes)
        out[lo + rows, cols] = ranked.neighbors
    return out


def _user_items(data: EvalData):
    """Contexts x items, the layout implicit fits on."""
    return data.item_context.T.tocsr()


def item_knn(data: EvalData, queries: np.ndarray, k: int) -> np.ndarray:
    """Items with the highest cosine between interaction vectors; none with cosine 0."""
    from implicit.nearest_neighbours import CosineRecommender
    from implicit.utils import ParameterWarning
    with warnings.catch_warnings():
        # implicit converts its own normalised matrix to CSR internally and warns about it.
        warnings.simplefilter("ignore", ParameterWarning)
        model = CosineRecommender(K=k + 1)
        model.fit(_user_items(data), show_progress=False)
    ids, _ = model.similar_items(np.asarray(queries, dtype=np.int32), N=k + 1)
    return drop_query(ids, queries, k)


def als(data: EvalData, queries: np.ndarray, k: int, *, factors: int, iterations: int,
        regularization: float, seed: int) -> np.ndarray:
    from implicit.als import AlternatingLeastSquares
    # implicit asks for single-threaded BLAS (its own threads do the parallel work)
    # and checks for it when the model is built.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, iterations=iterations,
                                        regularization=regularization, random_state=seed)
        model.fit(_user_items(data), show_progress=False)
        ids, _ = model.similar_items(np.asarray(queries, dtype=np.int32), N=k + 1)
    return drop_query(ids, queries, k)


def embedding_topk(matrix: np.ndarray, queries: np.ndarray, k: int,
                   live: np.ndarray | None = None) -> np.ndarray:
    """Exact inner-product top-k over item vectors (row = item id), live items only."""
    queries = np.asarray(queries, np.int64)
    if live is None or live.all():
        top, _ = ann.search(ann.exact_index(matrix), matrix, queries, k)
        return top
    items = np.flatnonzero(live)
    row_of = np.cumsum(live) - 1                  # item id -> row among the live items
    if not live[queries].all():
        raise ValueError("a query is a removed item's placeholder")
    sub = matrix[items]
    top, _ = ann.search(ann.exact_index(sub), sub, row_of[queries], k)
    return np.where(top >= 0, items[np.maximum(top, 0)], -1)


def features_only(data: EvalData, queries: np.ndarray, k: int) -> np.ndarray:
    """Cosine of the items' input features (L2-normalised rows; all-zero rows stay zero)."""
    return embedding_topk(normalize(data.features()), queries, k, data.live)
