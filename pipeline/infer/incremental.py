"""Incremental inference: re-embed only items whose receptive field changed.

With the same model, an item's embedding is a function of its K-layer
receptive field alone: its own features and neighbourhood row (ids and
weights), and recursively those of its neighbours, K levels down. So an item
is *affected* when an item within K hops of it along the ``neighbors`` lists
of the new graph changed its features or its neighbourhood row (or is new);
every other item's previous embedding is exactly what a full run computes.

The affected items need their neighbours' representations after K-1
convolutions, those need theirs after K-2, and so on; :func:`levels` gives
each item the number of convolutions it is needed after, and
:func:`pipeline.infer.embed` computes nothing else.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.ingest import numbered_from
from pipeline.io import schemas, versioned
from pipeline.io.arrays import dense_neighbors
from pipeline.io.manifests import GraphManifest

log = logging.getLogger(__name__)


@dataclass
class Plan:
    previous: str          # the embeddings version whose rows are reused
    node: np.ndarray       # items some recomputed embedding needs (sorted)
    depth: np.ndarray      # per item of ``node``: convolutions it is needed after (0..K)
    changed_items: int     # items whose own input changed (features, neighbourhood, new)
    n_items: int
    num_layers: int

    @property
    def recomputed(self) -> int:
        return int((self.depth == self.num_layers).sum())

    @property
    def reused(self) -> int:
        return self.n_items - self.recomputed


def levels(nbrs: np.ndarray, changed: np.ndarray, num_layers: int) -> np.ndarray:
    """Per item, the convolutions to compute for it (-1: none; ``num_layers``: re-embed it).

    ``nbrs``: the new ``neighbors`` lists as an ``n_items x T`` array padded
    with -1; ``changed``: the items whose own input changed.
    """
    valid = nbrs >= 0
    safe = np.where(valid, nbrs, 0)
    hit = np.zeros(len(nbrs), dtype=bool)
    hit[changed] = True
    for _ in range(num_layers):          # affected: a changed item within K hops
        hit = hit | (hit[safe] & valid).any(axis=1)
    depth = np.full(len(nbrs), -1, dtype=np.int64)
    depth[hit] = num_layers
    need = hit
    for k in range(num_layers - 1, -1, -1):   # R_k = R_{k+1} and its neighbours
        need = need.copy()
        need[nbrs[need][valid[need]]] = True
        depth[need & (depth < 0)] = k
    return depth


def changed_items(old_items: DataFrame, new_items: DataFrame, old_nb: DataFrame,
                  new_nb: DataFrame) -> DataFrame:
    """``node`` of every new item whose features or neighbourhood row differs from before."""
    def side(items, nb, suffix):
        return (items.select("node", F.col("features").alias(f"f{suffix}"))
                .join(nb.select("node", F.col("neighbors").alias(f"n{suffix}"),
                                F.col("weights").alias(f"w{suffix}")), "node", "left"))
    j = side(new_items, new_nb, "1").join(side(old_items, old_nb, "0"), "node", "left")
    same = (F.col("f0").isNotNull() & F.col("f1").eqNullSafe(F.col("f0"))
            & F.col("n1").eqNullSafe(F.col("n0")) & F.col("w1").eqNullSafe(F.col("w0")))
    return j.where(~same).select("node")


def plan(spark: SparkSession, run_dir: str, previous: str, inputs: dict[str, str], params: dict,
         code: dict[str, str], items: DataFrame, neighbors: DataFrame, *, n_items: int,
         num_neighbors: int, num_layers: int) -> tuple[Plan | None, str]:
    """What to recompute to turn ``embeddings/previous`` into the embeddings of ``inputs``.

    Returns ``(None, reason)`` when ``previous`` cannot be reused: another
    model, other parameters or code, or a graph not numbered from its graph.
    """
    try:
        prev = versioned.read_manifest(run_dir, "embeddings", previous)
        prev_graph = prev["inputs"]["graph"]
        old_nodes = versioned.resolve(run_dir, "graph", prev_graph) / "nodes"
        old_nb_dir = versioned.resolve(run_dir, "neighbors", prev["inputs"]["neighbors"])
        old_n_items = GraphManifest.read(run_dir, prev_graph).n_items
    except (versioned.StageNotFound, FileNotFoundError, KeyError) as e:
        return None, f"embeddings/{previous} or its inputs are gone ({e})"
    if prev["inputs"].get("model") != inputs["model"]:
        return None, f"it was made with model/{prev['inputs'].get('model')}"
    if prev.get("config") != params:
        return None, f"it was made with other parameters ({prev.get('config')})"
    if prev.get("code") != code:
        return None, "it was made by other code"
    if not numbered_from(run_dir, inputs["graph"], prev_graph):
        return None, f"graph/{inputs['graph']} is not numbered from graph/{prev_graph}"
    if old_n_items > n_items:
        return None, "fewer item slots than before"
    old_items = (spark.read.schema(schemas.NODES).parquet(str(old_nodes))
                 .where(F.col("type") == schemas.ITEM))
    old_nb = schemas.conform(spark.read.parquet(str(old_nb_dir / "neighbors")),
                             schemas.NEIGHBORS, "neighbors")
    changed = np.array([r["node"] for r in
                        changed_items(old_items, items, old_nb, neighbors).collect()], np.int64)
    table = ds.dataset(str(versioned.resolve(run_dir, "neighbors", inputs["neighbors"])
                           / "neighbors"), format="parquet").to_table(columns=["node", "neighbors",
                                                                              "weights"])
    nbrs, _ = dense_neighbors(table, n_items, num_neighbors)
    depth = levels(nbrs, changed, num_layers)
    node = np.flatnonzero(depth >= 0)
    p = Plan(previous, node, depth[node], int(len(changed)), n_items, num_layers)
    log.info("incremental inference: %d items changed, %d of %d to re-embed (%d computed at "
             "some layer)", p.changed_items, p.recomputed, n_items, len(node))
    return p, ""


__all__ = ["Plan", "changed_items", "levels", "plan"]
