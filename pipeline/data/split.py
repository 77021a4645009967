"""What every stage after the split reads of it: held-out pairs, training edges, live items.

Spark-free (pyarrow + NumPy), so validation during training, the evaluation
job and a notebook all read the split the same way.
"""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.config import EvalConfig, choices
from pipeline.errors import PipelineError
from pipeline.io import versioned
from pipeline.io.kinds import ITEM, RETIRED_ID

KINDS = choices(EvalConfig, "kind")


def read_holdout(run_dir: str, split_version: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, targets)`` of the split's held-out rows of one kind, as int64 item ids."""
    if kind not in KINDS:
        raise PipelineError(f"eval.kind must be one of {', '.join(KINDS)}, got '{kind}'")
    path = versioned.resolve(run_dir, "split", split_version) / "holdout"
    held = ds.dataset(str(path), format="parquet").to_table(
        filter=pc.field("kind") == kind, columns=["user", "query", "target"])
    # A fixed order (by user, then target) so results do not depend on file layout.
    order = np.lexsort((held.column("target").to_numpy(), held.column("user").to_numpy()))
    return (held.column("query").to_numpy()[order].astype(np.int64),
            held.column("target").to_numpy()[order].astype(np.int64))


def read_train_edges(run_dir: str, split_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, weight)`` of the split's training edges."""
    path = versioned.resolve(run_dir, "split", split_version) / "train_edges"
    t = ds.dataset(str(path), format="parquet").to_table(columns=["src", "dst", "weight"])
    return (t.column("src").to_numpy().astype(np.int64), t.column("dst").to_numpy().astype(np.int64),
            t.column("weight").to_numpy().astype(np.float32))


def read_live_items(run_dir: str, graph_version: str, n_items: int) -> np.ndarray:
    """Mask over item ids: False for placeholders of removed items (never ranked, never served)."""
    path = versioned.resolve(run_dir, "graph", graph_version) / "nodes"
    t = ds.dataset(str(path), format="parquet").to_table(
        filter=pc.field("type") == ITEM, columns=["node", "id"])
    live = np.ones(n_items, dtype=bool)
    retired = t.column("node").to_numpy()[pc.equal(t.column("id"), RETIRED_ID).to_numpy(
        zero_copy_only=False)]
    live[retired[retired < n_items]] = False
    return live


def item_degree(src: np.ndarray, dst: np.ndarray, n_items: int) -> np.ndarray:
    """Interactions per item in the given edges (both ends count on item-item graphs)."""
    ends = np.concatenate([dst, src])
    return np.bincount(ends[ends < n_items], minlength=n_items).astype(np.float64)
