"""Stage tables as dense NumPy arrays (pyarrow only, so no Spark is needed to use them)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def dense_neighbors(table: pa.Table, n_items: int, num_neighbors: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The ``neighbors`` table as ``(ids, weights)``, both ``n_items x T``; padding -1 / 0."""
    ids = np.full((n_items, num_neighbors), -1, dtype=np.int64)
    w = np.zeros((n_items, num_neighbors), dtype=np.float32)
    node = table.column("node").to_numpy()
    nb = table.column("neighbors").combine_chunks()
    wt = table.column("weights").combine_chunks()
    lengths = np.diff(nb.offsets.to_numpy())
    rows = np.repeat(node, lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[rows, cols] = nb.flatten().to_numpy()
    w[rows, cols] = wt.flatten().to_numpy()
    return ids, w
