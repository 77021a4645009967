"""Serving: the items most similar to given items, from a published ``index`` stage.

Reads the current release's index (:func:`pipeline.io.versioned.served_version`),
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


@functools.lru_cache(maxsize=4)
def _open(run_dir: str, version: str
          ) -> tuple[faiss.Index, np.ndarray, dict[str, int], np.ndarray | None]:
    """A published index, its row ids, id -> row and the query shift; cached (versions never
    change)."""
    path = versioned.resolve(run_dir, STAGE, version)
    index = faiss.read_index(str(path / INDEX_FILE))
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # lets reconstruct() find a row's vector
    ids = np.asarray(pq.read_table(path / ITEMS_TABLE).column("id").to_pylist(), dtype=object)
    shift = versioned.read_manifest(run_dir, STAGE, version).get("query_shift")
    return (index, ids, {v: i for i, v in enumerate(ids)},
            None if shift is None else np.asarray(shift, np.float32))


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
    path = versioned.resolve(run_dir, STAGE, version or versioned.served_version(run_dir, STAGE))
    index, row_ids, row_of, shift = _open(str(run_dir), path.name)
    wanted = [str(i) for i in ids]
    missing = [i for i in wanted if i not in row_of]
    if missing:
        raise PipelineError(f"{len(missing)} of {len(wanted)} ids are not items of index/{path.name}, "
                            f"e.g. {missing[:5]}")
    rows = np.asarray([row_of[i] for i in wanted], dtype=np.int64)
    if not len(rows):
        return [], np.zeros((0, k), np.float32)
    vectors = index.reconstruct_batch(rows)
    if shift is not None:   # an item searches with its shifted vector (PinSage.query)
        vectors = vectors + shift
    kept, scores = search_vectors(index, vectors, rows, k)
    scores[kept < 0] = np.nan
    return [[row_ids[r] for r in row if r >= 0] for row in kept], scores
