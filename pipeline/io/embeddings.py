"""Reading the published ``embeddings`` stage without Spark (evaluation, serving)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as ds

from pipeline.io import versioned

STAGE = "embeddings"
TABLE = "embeddings"


@dataclass
class Embeddings:
    version: str
    node: np.ndarray        # (N,) int64, ascending
    id: list[str]           # (N,) the source's ids
    matrix: np.ndarray      # (N, d) float32, L2-normalised rows
    query_shift: np.ndarray | None = None   # (d,) added to a query's row (model.item_bias)


def read_embeddings(run_dir: str | os.PathLike, version: str | None = None) -> Embeddings:
    """The embeddings of a published version (default: latest), sorted by node."""
    path = versioned.check_version(run_dir, STAGE, version)
    table = ds.dataset(str(path / TABLE), format="parquet").to_table(
        columns=["node", "id", "embedding"])
    order = np.argsort(table.column("node").to_numpy(), kind="stable")
    table = table.take(order)
    emb = table.column("embedding").combine_chunks()
    n = table.num_rows
    dim = len(emb[0]) if n else 0
    matrix = emb.flatten().to_numpy().astype(np.float32, copy=False).reshape(n, dim)
    shift = versioned.read_manifest(run_dir, STAGE, path.name).get("query_shift")
    return Embeddings(version=path.name, node=table.column("node").to_numpy(),
                      id=table.column("id").to_pylist(), matrix=matrix,
                      query_shift=None if shift is None else np.asarray(shift, np.float32))
