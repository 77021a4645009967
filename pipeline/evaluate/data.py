"""What evaluation reads: the held-out pairs and the TRAINING graph of one split.

Baselines are built from ``train_edges`` only: the held-out interactions
never reach them. The readers are shared with training (:mod:`pipeline.data.split`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from pipeline.data.features import cached_feature_store
from pipeline.data.split import item_degree, read_holdout, read_live_items, read_train_edges
from pipeline.errors import PipelineError
from pipeline.io import versioned
from pipeline.io.manifests import GraphManifest, SplitManifest
from pipeline.split import new_items

@dataclass
class EvalData:
    """One split of one graph, as evaluation needs it."""

    run_dir: str
    graph_version: str
    split_version: str
    n_items: int
    n_nodes: int
    bipartite: bool
    feature_names: list[str]
    queries: np.ndarray      # held-out queries (item ids)
    targets: np.ndarray      # the items that should be retrieved for them
    live: np.ndarray         # False for removed items' placeholders, which are never ranked
    src: np.ndarray          # training edges only
    dst: np.ndarray
    weight: np.ndarray
    # split.protocol=new_items: items the evaluated model never saw
    new_items: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sampled: str = ""        # why only a sample of the held-out pairs is scored, if so

    @cached_property
    def degree(self) -> np.ndarray:
        return item_degree(self.src, self.dst, self.n_items)

    @cached_property
    def item_context(self) -> sp.csr_matrix:
        """Items x contexts interaction matrix of the training graph.

        Contexts are users on a bipartite graph, the other end of each edge on
        an item-item graph (edges count both ways). Duplicates are summed.
        """
        if self.bipartite:
            rows, cols, w = self.dst, self.src - self.n_items, self.weight
            shape = (self.n_items, self.n_nodes - self.n_items)
        else:
            rows = np.concatenate([self.src, self.dst])
            cols = np.concatenate([self.dst, self.src])
            w = np.concatenate([self.weight, self.weight])
            shape = (self.n_items, self.n_items)
        m = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=shape)
        m.sum_duplicates()
        return m

    def features(self) -> np.ndarray:
        store = cached_feature_store(self.run_dir, self.graph_version)
        return store.gather(np.arange(store.num_items))


def held_out_rows(cfg, kind: str, split_version: str | None = None) -> EvalData:
    """:func:`load` as every scorer of a run calls it (evaluation, the refresh's gate, the
    ablation, the aggregator comparison): ``kind`` rows of the split (the latest where not
    given), sampled by ``eval.max_queries`` or, on a large graph, ``eval.large_graph_*``."""
    ev = cfg.eval
    return load(cfg.run_dir, kind=kind, split_version=split_version, max_queries=ev.max_queries,
                seed=int(cfg.seed), large_graph=(ev.large_graph_items, ev.large_graph_queries))


def load(run_dir: str, kind: str = "test", split_version: str | None = None,
         max_queries: int = 0, seed: int = 0, large_graph: tuple[int, int] | None = None
         ) -> EvalData:
    """The latest split (or ``split_version``) and the graph it was cut from.

    Under ``split.protocol=new_items`` only rows whose target is a new item are
    kept. ``max_queries`` > 0 keeps a seeded sample of that many held-out pairs;
    with 0, ``large_graph = (items, queries)`` keeps ``queries`` of them on a
    graph of at least ``items`` items, so that scoring stays bounded at scale.
    """
    split_version = split_version or versioned.latest_inputs(run_dir, ("split",), "evaluation")["split"]
    graph_version = versioned.check_version(
        run_dir, "graph", SplitManifest.read(run_dir, split_version).graph).name
    g = GraphManifest.read(run_dir, graph_version)
    queries, targets = read_holdout(run_dir, split_version, kind)
    new = new_items.read(run_dir, split_version)
    if new_items.is_inductive(run_dir, split_version):
        # The inductive protocol scores the rows whose target the model never saw.
        keep = np.isin(targets, new)
        queries, targets = queries[keep], targets[keep]
    if len(queries) == 0:
        raise PipelineError(f"split/{split_version} holds no '{kind}' interactions to evaluate on")
    sampled = ""
    if max_queries == 0 and large_graph is not None and g.n_items >= large_graph[0]:
        max_queries = large_graph[1]
        if max_queries < len(queries):
            sampled = (f"a seeded sample of {max_queries:,} of the {len(queries):,} held-out "
                       f"pairs: the graph has {g.n_items:,} items >= eval.large_graph_items="
                       f"{large_graph[0]:,} (set eval.max_queries to choose)")
    if 0 < max_queries < len(queries):
        keep = np.sort(np.random.default_rng(seed).choice(len(queries), max_queries, replace=False))
        queries, targets = queries[keep], targets[keep]
    src, dst, weight = read_train_edges(run_dir, split_version)
    n_items = g.n_items
    return EvalData(run_dir=run_dir, graph_version=graph_version, split_version=split_version,
                    n_items=n_items, n_nodes=g.n_nodes, bipartite=g.bipartite,
                    feature_names=g.feature_names if g.feature_dim else [], queries=queries, targets=targets,
                    live=read_live_items(run_dir, graph_version, n_items), src=src, dst=dst,
                    weight=weight, new_items=new, sampled=sampled)
