"""Incremental neighbourhoods: rank again only the items whose visits can see a change.

An item's neighbourhood is a function of the seed and of the adjacency rows
(neighbours, integer weights, hence degrees and strengths) of the nodes its
mass is pushed from — half-hop positions ``0 .. 2L-1`` (bipartite) or hop
positions ``0 .. L-1`` (item-item) — and of the strength of the items it
reaches at the end (the score divides by ``degree^β``): positions up to
``2L`` or ``L``. So an item with no endpoint of a changed edge within that
many half hops, in the old graph and in the new, gets exactly the same
propagation, scores and tie-breaks, and its previous neighbourhood and hard
candidates are reused as they are: the result equals a full re-sample bit for
bit. A change of the weight quantisation (:func:`pipeline.sampling.ppr.scale_of`,
which moves only for non-integer weights) changes every row: then nothing is reused.

Needs the previous version's numbering (ingest carries the id map over: items
keep their numbers; users move by the number of item slots added).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds
import scipy.sparse as sp

from pipeline.ingest import numbered_from
from pipeline.io import versioned
from pipeline.io.manifests import GraphManifest, NeighborsManifest, SplitManifest
from pipeline.sampling import ppr

log = logging.getLogger(__name__)


@dataclass
class Plan:
    previous: str            # the neighbors version whose rows are reused
    starts: np.ndarray       # items to rank again (sorted)
    changed_edges: int
    n_items: int

    @property
    def reused(self) -> int:
        return self.n_items - len(self.starts)


def _edges(run_dir: str, split_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = versioned.resolve(run_dir, "split", split_version) / "train_edges"
    t = ds.dataset(str(path), format="parquet").to_table(columns=["src", "dst", "weight"])
    return (t.column("src").to_numpy().astype(np.int64), t.column("dst").to_numpy().astype(np.int64),
            t.column("weight").to_numpy().astype(np.float32))


def plan(run_dir: str, previous: str, split_version: str, params: dict, code: dict[str, str],
         window: tuple, n_items: int, n_nodes: int, bipartite: bool) -> tuple[Plan | None, str]:
    """Items to rank again from ``previous`` (a ``neighbors`` version), or ``(None, reason)``.

    ``params``: :func:`pipeline.sampling.neighbor_params`, which must all match, as must
    ``code`` (the stage's source hashes).
    """
    try:
        prev = NeighborsManifest.read(run_dir, previous)
        prev_split = prev.split
        prev_graph = SplitManifest.read(run_dir, prev_split).graph
        graph = SplitManifest.read(run_dir, split_version).graph
        pg = GraphManifest.read(run_dir, prev_graph)
    except (versioned.StageNotFound, FileNotFoundError, KeyError) as e:
        return None, f"previous neighbors/{previous} or its inputs are gone ({e})"
    if any(prev.params.get(k) != v for k, v in params.items()):
        return None, "neighbourhood parameters changed"
    if prev.code != code:
        return None, "the code that ranks neighbourhoods changed"
    if list(prev.hard_window_ranks) != list(window):
        return None, "the hard-negative window moved with the catalogue size"
    if pg.bipartite != bipartite or not numbered_from(run_dir, graph, prev_graph):
        return None, f"graph/{graph} is not numbered from graph/{prev_graph}"
    old_items = pg.n_items
    if old_items > n_items:
        return None, "fewer item slots than before"
    shift = n_items - old_items
    o_src, o_dst, o_w = _edges(run_dir, prev_split)
    n_src, n_dst, n_w = _edges(run_dir, split_version)
    if ppr.scale_of(o_w) != ppr.scale_of(n_w):
        return None, "the edge weights are quantised on another scale"
    if bipartite:
        o_src = o_src + shift   # users follow the item slots
    size = np.int64(max(n_nodes, pg.n_nodes + shift, 1))
    o_key, n_key = o_src * size + o_dst, n_src * size + n_dst
    common, oi, ni = np.intersect1d(o_key, n_key, assume_unique=True, return_indices=True)
    reweighted = common[o_w[oi] != n_w[ni]]
    changed = np.concatenate([np.setdiff1d(o_key, common, assume_unique=True),
                              np.setdiff1d(n_key, common, assume_unique=True), reweighted])
    ends = np.unique(np.concatenate([changed // size, changed % size]))
    # Rows read: positions 0 .. reach in half hops (bipartite) or hops.
    reach = 2 * int(params["walk_length"]) if bipartite else int(params["walk_length"])
    src = np.concatenate([o_src, n_src])
    dst = np.concatenate([o_dst, n_dst])
    adj = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(size, size))
    adj = ((adj + adj.T) > 0).astype(np.float32).tocsr()
    reached = np.zeros(size, dtype=bool)
    reached[ends] = True
    frontier = reached.copy()
    for _ in range(reach):
        if not frontier.any():
            break
        frontier = (adj @ frontier.astype(np.float32) > 0) & ~reached
        reached |= frontier
    starts = np.union1d(np.flatnonzero(reached[:n_items]), np.arange(old_items, n_items))
    log.info("incremental neighbourhoods: %d changed edges, %d of %d items to rank again",
             len(changed), len(starts), n_items)
    return Plan(previous, starts.astype(np.int64), int(len(changed)), n_items), ""
