"""Stage tables as dense NumPy arrays (pyarrow only, so no Spark is needed to use them)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def pad_lists(neighbors: pa.Array, weights: pa.Array, num_neighbors: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Row i's neighbour list and weights in row i of ``(ids, weights)``, ``len x T``.

    Padding (and a null list) is id -1 / weight 0.
    """
    if isinstance(neighbors, pa.ChunkedArray):
        neighbors, weights = neighbors.combine_chunks(), weights.combine_chunks()
    n = len(neighbors)
    ids = np.full((n, num_neighbors), -1, dtype=np.int64)
    w = np.zeros((n, num_neighbors), dtype=np.float32)
    lengths = pc.fill_null(pc.list_value_length(neighbors), 0).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[rows, cols] = neighbors.flatten().to_numpy()
    w[rows, cols] = weights.flatten().to_numpy()
    return ids, w


def dense_neighbors(table: pa.Table, n_items: int, num_neighbors: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The ``neighbors`` table as ``(ids, weights)``, both ``n_items x T``; padding -1 / 0."""
    ids = np.full((n_items, num_neighbors), -1, dtype=np.int64)
    w = np.zeros((n_items, num_neighbors), dtype=np.float32)
    node = table.column("node").to_numpy()
    ids[node], w[node] = pad_lists(table.column("neighbors"), table.column("weights"),
                                   num_neighbors)
    return ids, w
