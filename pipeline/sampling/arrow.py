"""Arrow glue between Spark's mapInArrow and the NumPy walk kernel."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.sampling.walks import Ranked

# What both walk modes produce for every item: its importance neighbourhood
# and its hard-negative candidates (visit ranks inside the hard window).
RANKED_SCHEMA = "node long, neighbors array<long>, weights array<float>, hard array<long>"


def ranked_batch(nodes: np.ndarray, r: Ranked) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([
        pa.array(nodes, pa.int64()),
        pa.ListArray.from_arrays(pa.array(r.nbr_offsets, pa.int32()), pa.array(r.neighbors, pa.int64())),
        pa.ListArray.from_arrays(pa.array(r.nbr_offsets, pa.int32()), pa.array(r.weights, pa.float32())),
        pa.ListArray.from_arrays(pa.array(r.hard_offsets, pa.int32()), pa.array(r.hard, pa.int64())),
    ], names=["node", "neighbors", "weights", "hard"])


def column(batch: pa.RecordBatch | pa.Table, name: str, dtype=np.int64) -> np.ndarray:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
