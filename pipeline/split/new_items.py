"""The inductive protocol ``split.protocol=new_items``: items the trained model never sees.

The question a graph-convolution model exists to answer: how good are the
embeddings of items that arrived after training? A seeded
``split.new_item_fraction`` of the items with at least
``split.new_item_min_degree`` training edges is *new*. The ``split`` stage
keeps the base protocol's training edges (``leave_last_out`` when the edges
have times, else ``random_edges``): the graph as it is known the day after
training, new items' edges included, which inference and every baseline use.
The model trains on an *inductive view* of that split, published as its own
stages in ``<run_dir>/_inductive/``: the training edges without any edge of a
new item, and the held-out rows without a new query or target. Pairs,
minibatches (queries, positives, negatives, neighbours) and training
validation are built from that view alone, so no new item reaches the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.errors import PipelineError
from pipeline.io import versioned
from pipeline.io.manifests import SplitManifest
from pipeline.split.protocols import unit_hash

PROTOCOL = "new_items"
INDUCTIVE_DIR = "_inductive"
TABLE = "new_items"
# Stages of the main run that the inductive view shares (linked, not copied).
SHARED_STAGES = ("graph",)


def base_protocol(has_time: bool) -> str:
    """How queries and held-out rows are chosen before the new items are set apart."""
    return "leave_last_out" if has_time else "random_edges"


def choose(train_edges: DataFrame, n_items: int, bipartite: bool, seed: int, fraction: float,
           min_degree: int) -> DataFrame:
    """``node`` of each new item: a seeded ``fraction`` of the items with ``min_degree`` edges.

    The draw is a hash of (seed, item), so it does not depend on partitioning.
    """
    ends = (train_edges.select(F.col("dst").alias("node")) if bipartite else
            train_edges.select(F.col("src").alias("node"))
            .unionAll(train_edges.select(F.col("dst").alias("node"))))
    degree = ends.where(F.col("node") < n_items).groupBy("node").count()
    return (degree.where(F.col("count") >= min_degree)
            .where(unit_hash(seed + 3, "node") < fraction).select("node"))


def view(train_edges: DataFrame, holdout: DataFrame, new: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(training edges, held-out rows)`` with no new item at either end."""
    nodes = F.broadcast(new.select("node"))
    train = (train_edges.join(nodes.withColumnRenamed("node", "src"), "src", "left_anti")
             .join(nodes.withColumnRenamed("node", "dst"), "dst", "left_anti"))
    held = (holdout.join(nodes.withColumnRenamed("node", "query"), "query", "left_anti")
            .join(nodes.withColumnRenamed("node", "target"), "target", "left_anti"))
    return train, held


def inductive_dir(run_dir: str) -> str:
    """The run directory of the inductive view, sharing the main run's ``graph`` (linked)."""
    return versioned.link_stages(run_dir, str(Path(run_dir) / INDUCTIVE_DIR), SHARED_STAGES)


def is_inductive(run_dir: str, split_version: str) -> bool:
    return SplitManifest.read(run_dir, split_version).protocol == PROTOCOL


def read(run_dir: str, split_version: str) -> np.ndarray:
    """The split's new items (sorted int64 node ids); empty for the other protocols."""
    path = versioned.resolve(run_dir, "split", split_version) / TABLE
    if not path.exists():
        return np.empty(0, np.int64)
    nodes = ds.dataset(str(path), format="parquet").to_table(columns=["node"])
    return np.sort(nodes.column("node").to_numpy().astype(np.int64))


@dataclass
class TrainingView:
    """Where the trainer reads its minibatches, and what it must never see."""

    dir: str                    # run directory holding graph, split, neighbors, batches
    source_split: str | None    # the evaluated split the view was cut from (new_items only)
    new: np.ndarray             # items kept out of the model (empty for other protocols)


def training_view(run_dir: str, inductive: bool = True) -> TrainingView:
    """The inductive view under ``new_items`` (unless ``inductive=False``), else the run itself."""
    split = versioned.latest_version(run_dir, "split")
    if not inductive or split is None or not is_inductive(run_dir, split):
        return TrainingView(run_dir, None, np.empty(0, np.int64))
    sub = str(Path(run_dir) / INDUCTIVE_DIR)
    sub_split = versioned.latest_version(sub, "split") if Path(sub).is_dir() else None
    if sub_split is None or SplitManifest.read(sub, sub_split).source_split != split:
        raise PipelineError(f"training: the inductive view of split/{split} is missing from "
                            f"{sub}; run jobs/sample.py first")
    return TrainingView(sub, split, read(run_dir, split))
