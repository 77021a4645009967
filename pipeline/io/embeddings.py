"""Reading the published ``embeddings`` stage without Spark (evaluation, serving)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.io import versioned

STAGE = "embeddings"
TABLE = "embeddings"


@dataclass
class Embeddings:
    version: str
    node: np.ndarray        # (N,) int64, ascending
    id: list[str]           # (N,) the source's ids
    matrix: np.ndarray      # (N, d) float32, L2-normalised rows: what is searched
    queries: np.ndarray     # (N, d) float32: what each item searches with (PinSage.query)


def read_embeddings(run_dir: str | os.PathLike, version: str | None = None) -> Embeddings:
    """The embeddings of a published version (default: latest), sorted by node."""
    path = versioned.check_version(run_dir, STAGE, version)
    table = ds.dataset(str(path / TABLE), format="parquet").to_table(
        columns=["node", "id", "embedding", "query"])
    order = np.argsort(table.column("node").to_numpy(), kind="stable")
    table = table.take(order)
    return Embeddings(version=path.name, node=table.column("node").to_numpy(),
                      id=table.column("id").to_pylist(), matrix=vectors(table.column("embedding")),
                      queries=vectors(table.column("query")))


def list_column(matrix: np.ndarray) -> pa.ListArray:
    """An (n, d) matrix as an Arrow column of n lists of d values (inverse of :func:`vectors`)."""
    n, d = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)),
                                    pa.array(matrix.reshape(-1)))


def vectors(column) -> np.ndarray:
    """An Arrow column of equal-length float lists as an (n, d) float32 matrix."""
    flat = column.combine_chunks()
    n = len(flat)
    dim = len(flat[0]) if n else 0
    return flat.flatten().to_numpy().astype(np.float32, copy=False).reshape(n, dim)
