"""Arrow glue between Spark's mapInArrow and the NumPy kernels."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.sampling.ppr import Ranked

# What both modes produce for every item: its importance neighbourhood, its
# hard-negative candidates (score ranks inside the hard window) and the edges
# its propagation pushed mass along (the work, for the manifest).
RANKED_SCHEMA = ("node long, neighbors array<long>, weights array<float>, hard array<long>, "
                 "pushes long")


def ranked_batch(nodes: np.ndarray, r: Ranked, pushes: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([
        pa.array(nodes, pa.int64()),
        pa.ListArray.from_arrays(pa.array(r.nbr_offsets, pa.int32()), pa.array(r.neighbors, pa.int64())),
        pa.ListArray.from_arrays(pa.array(r.nbr_offsets, pa.int32()), pa.array(r.weights, pa.float32())),
        pa.ListArray.from_arrays(pa.array(r.hard_offsets, pa.int32()), pa.array(r.hard, pa.int64())),
        pa.array(pushes, pa.int64()),
    ], names=["node", "neighbors", "weights", "hard", "pushes"])


def column(batch: pa.RecordBatch | pa.Table, name: str, dtype=np.int64) -> np.ndarray:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
