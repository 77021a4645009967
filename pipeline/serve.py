"""Serving: the items most similar to given items, from a published ``index`` stage.

Reads the current release's index (:func:`pipeline.io.manifests.served_version`),
so a job run after the release never changes what is served.
"""
from __future__ import annotations

import functools
import os

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.evaluate.index import INDEX_FILE, ITEMS_TABLE, STAGE, search_vectors
from pipeline.io import versioned
from pipeline.io.embeddings import vectors
from pipeline.io.manifests import served_version


@functools.lru_cache(maxsize=4)
def _open(run_dir: str, version: str
          ) -> tuple[faiss.Index, np.ndarray, dict[str, int], np.ndarray]:
    """A published index, its row ids, id -> row and the rows' query vectors; cached
    (versions never change)."""
    path = versioned.resolve(run_dir, STAGE, version)
    index = faiss.read_index(str(path / INDEX_FILE))
    items = pq.read_table(path / ITEMS_TABLE)
    ids = np.asarray(items.column("id").to_pylist(), dtype=object)
    return index, ids, {v: i for i, v in enumerate(ids)}, vectors(items.column("query"))


def similar_items(run_dir: str | os.PathLike, ids, k: int = 10, version: str | None = None
                  ) -> tuple[list[list[str]], np.ndarray]:
    """The ``k`` items most similar to each of ``ids`` (source ids) in a published index.

    Returns ``(similar ids, scores)``: one list of source ids per query and an
    ``(len(ids), k)`` float32 array of inner products, best first; the query
    itself is never among its results. Without ``version``, the index of the
    current release (the newest index before the first release).
    """
    if k < 1:
        raise PipelineError(f"k must be >= 1, got {k}")
    path = versioned.resolve(run_dir, STAGE, version or served_version(run_dir, STAGE))
    index, row_ids, row_of, query_vectors = _open(str(run_dir), path.name)
    wanted = [str(i) for i in ids]
    missing = [i for i in wanted if i not in row_of]
    if missing:
        raise PipelineError(f"{len(missing)} of {len(wanted)} ids are not items of index/{path.name}, "
                            f"e.g. {missing[:5]}")
    rows = np.asarray([row_of[i] for i in wanted], dtype=np.int64)
    if not len(rows):
        return [], np.zeros((0, k), np.float32)
    # An item searches with its query vector (PinSage.query), not its indexed one.
    kept, scores = search_vectors(index, query_vectors[rows], rows, k)
    scores[kept < 0] = np.nan
    return [[row_ids[r] for r in row if r >= 0] for row in kept], scores
