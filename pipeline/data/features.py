"""Item features as one memory-mapped float32 matrix, row ``i`` = item node ``i``.

The ``nodes`` table is Parquet with one list per row; the trainer needs random
rows for every minibatch. Converting it once into a dense ``.npy`` lets every
loader thread (and every DDP process on a host) gather rows straight from the
page cache, with no copy of the whole matrix per process.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.io import versioned
from pipeline.io.kinds import ITEM


class FeatureStore:
    """Read-only ``(num_items, dim)`` float32 matrix, indexed by item node id."""

    def __init__(self, array: np.ndarray, path: str | os.PathLike | None = None):
        if array.ndim != 2 or array.dtype != np.float32:
            raise ValueError(f"feature store {path or ''} must be a 2-D float32 array, "
                             f"got {array.ndim}-D {array.dtype}")
        self._array = array
        self.path = Path(path) if path is not None else None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        """Memory-map a store written by :func:`build_feature_store`."""
        return cls(np.load(path, mmap_mode="r"), path)

    @property
    def dim(self) -> int:
        return int(self._array.shape[1])

    @property
    def num_items(self) -> int:
        return int(self._array.shape[0])

    def gather(self, node_ids: np.ndarray) -> np.ndarray:
        """Rows for ``node_ids`` as a new float32 ``(len, dim)`` array.

        Ids are checked: a negative id would silently wrap around to another
        item, and a user id would index past the items.
        """
        ids = np.asarray(node_ids)
        if ids.ndim != 1:
            raise ValueError(f"node_ids must be 1-D, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_items):
            raise IndexError(f"node ids must be items in [0, {self.num_items}), "
                             f"got min {ids.min()} max {ids.max()}")
        return np.ascontiguousarray(self._array[ids], dtype=np.float32)


def build_feature_store(nodes_parquet_dir: str | os.PathLike,
                        out_path: str | os.PathLike) -> FeatureStore:
    """Write the item rows of ``nodes`` as a dense ``.npy`` at ``out_path``; open it.

    Items are numbered ``0 .. n_items-1`` by ingest; every one must appear
    exactly once with the same feature length (possibly 0). The file is
    written under a temporary name and renamed, so a reader never sees a
    partial store.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dataset = ds.dataset(str(nodes_parquet_dir), format="parquet")
    is_item = ds.field("type") == ITEM
    n_items = dataset.count_rows(filter=is_item)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        matrix = None
        seen = np.zeros(n_items, dtype=bool)
        for rb in dataset.to_batches(columns=["node", "features"], filter=is_item):
            if rb.num_rows == 0:
                continue
            node = rb.column("node").to_numpy()
            feats = rb.column("features")
            offsets = feats.offsets.to_numpy()
            lengths = np.diff(offsets)
            if matrix is None:
                matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                   shape=(n_items, int(lengths[0])))
            dim = matrix.shape[1]
            if np.any(lengths != dim):
                bad = int(node[np.argmax(lengths != dim)])
                raise ValueError(f"item {bad} has {int(lengths[lengths != dim][0])} features, "
                                 f"other items have {dim}")
            if node.min() < 0 or node.max() >= n_items:
                raise ValueError(f"item node ids must be in [0, {n_items}), got min {node.min()} "
                                 f"max {node.max()}; the nodes table is not numbered items first")
            if seen[node].any() or len(np.unique(node)) != len(node):
                raise ValueError("an item node id appears more than once in the nodes table")
            seen[node] = True
            values = feats.values.slice(offsets[0], offsets[-1] - offsets[0])
            matrix[node] = values.cast(pa.float32()).to_numpy().reshape(len(node), dim)
        if matrix is None:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(0, 0))
        if not seen.all():
            raise ValueError(f"{int((~seen).sum())} of {n_items} item node ids are missing")
        matrix.flush()
        del matrix
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FeatureStore.open(out)


def cached_feature_store(run_dir: str | os.PathLike, graph_version: str) -> FeatureStore:
    """The items' features of a graph version, memory-mapped; built once, shared by every stage."""
    path = Path(run_dir) / "_cache" / f"features-{graph_version}.npy"
    if not path.exists():
        build_feature_store(versioned.resolve(run_dir, "graph", graph_version) / "nodes", path)
    return FeatureStore.open(path)
