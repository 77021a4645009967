"""Ranking metrics on held-out (query, target) pairs, and paired bootstrap CIs.

Every method hands over the same thing: for each query, its top items in
order, the query itself already removed (``-1`` pads a short list). From that
one array come the target's rank, hit-rate@K and reciprocal rank, so every
method is scored by the same code.
"""
from __future__ import annotations

import numpy as np


def _compact(top: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` kept entries of each row, order kept, ``-1`` padding the rest."""
    # Stable sort of "dropped" flags moves dropped entries to the end, order kept.
    order = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(np.where(keep, top, -1), order, axis=1)[:, :k]
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def drop_query(top: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` items of each row of ``top`` that are not the row's query.

    ``top`` should hold ``k + 1`` columns, so a row keeps ``k`` items whether
    or not the query came back among them; ``-1`` entries stay as padding.
    """
    top = np.asarray(top, dtype=np.int64)
    return _compact(top, top != np.asarray(queries, dtype=np.int64)[:, None], k)


def only_items(top: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``top`` without the items ``allowed`` (a mask over item ids) rules out, order kept.

    Placeholders of removed items are never a recommendation, whichever
    method ranked them.
    """
    top = np.asarray(top, dtype=np.int64)
    keep = (top >= 0) & np.asarray(allowed, dtype=bool)[np.maximum(top, 0)]
    return _compact(top, keep, top.shape[1])


def target_ranks(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target in ``top``; 0 when it is not there."""
    top = np.asarray(top, dtype=np.int64)
    found = top == np.asarray(targets, dtype=np.int64)[:, None]
    return np.where(found.any(axis=1), found.argmax(axis=1) + 1, 0)


def per_query(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-query values of hit-rate@K for each K and of reciprocal rank (MRR's terms).

    The reciprocal rank is 0 beyond the retrieved list, i.e. beyond max(ks).
    """
    ranks = np.asarray(ranks)
    out = {f"hit_rate@{k}": ((ranks > 0) & (ranks <= k)).astype(np.float64) for k in ks}
    out["mrr"] = np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)
    return out


def bootstrap_ci(values: dict[str, dict[str, np.ndarray]], samples: int, seed: int,
                 level: float = 0.95) -> dict[str, dict[str, list[float]]]:
    """Percentile bootstrap CI of each mean, resampling queries.

    ``values[method][metric]`` are per-query values over the same queries; each
    resample draws one set of queries used for every method and metric (a
    paired bootstrap), so methods are compared on identical resamples. The
    result depends only on the inputs and ``seed``.
    """
    keys = [(m, name) for m, metrics in values.items() for name in metrics]
    if not keys:
        return {}
    stacked = np.stack([values[m][name] for m, name in keys], axis=1)
    n = stacked.shape[0]
    if n == 0 or samples < 1:
        return {m: {name: [float("nan"), float("nan")] for name in metrics}
                for m, metrics in values.items()}
    rng = np.random.default_rng(seed)
    means = np.empty((samples, stacked.shape[1]))
    # Resample counts rather than indices: memory O(n) per draw, not O(n x samples).
    for b in range(samples):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
        means[b] = counts @ stacked / n
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], axis=0)
    out: dict[str, dict[str, list[float]]] = {m: {} for m in values}
    for j, (m, name) in enumerate(keys):
        out[m][name] = [float(lo[j]), float(hi[j])]
    return out


def summarize(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean hit-rate@K and MRR of one method."""
    return {name: float(v.mean()) if len(v) else float("nan")
            for name, v in per_query(ranks, ks).items()}
