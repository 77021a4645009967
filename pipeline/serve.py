"""Serving: the items most similar to given items, from a published ``index`` stage.

Reads the current release's index (:func:`pipeline.io.versioned.served_version`),
so a job run after the release never changes what is served.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.evaluate.index import INDEX_FILE, ITEMS_TABLE, STAGE
from pipeline.io import versioned
from pipeline.metrics import drop_query


@functools.lru_cache(maxsize=4)
def _open(path: str) -> tuple[faiss.Index, np.ndarray, dict[str, int], np.ndarray | None]:
    """A published index, its row ids, id -> row and the query shift; cached (versions never
    change)."""
    index = faiss.read_index(str(Path(path) / INDEX_FILE))
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # lets reconstruct() find a row's vector
    items = pq.read_table(Path(path) / ITEMS_TABLE)
    ids = np.asarray(items.column("id").to_pylist(), dtype=object)
    shift = json.loads((Path(path) / versioned.MANIFEST).read_text()).get("query_shift")
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
    index, row_ids, row_of, shift = _open(str(path))
    wanted = [str(i) for i in ids]
    missing = [i for i in wanted if i not in row_of]
    if missing:
        raise PipelineError(f"{len(missing)} of {len(wanted)} ids are not items of index/{path.name}, "
                            f"e.g. {missing[:5]}")
    rows = np.asarray([row_of[i] for i in wanted], dtype=np.int64)
    vectors = index.reconstruct_batch(rows) if len(rows) else np.zeros((0, index.d), np.float32)
    if shift is not None:   # an item searches with its shifted vector (PinSage.query)
        vectors = vectors + shift
    k1 = min(k + 1, index.ntotal)
    s, found = index.search(vectors, k1) if len(rows) else (np.zeros((0, k1)), np.zeros((0, k1), np.int64))
    kept = drop_query(found, rows, k)
    pos = np.argmax(found[:, None, :] == kept[:, :, None], axis=2)
    scores = np.where(kept >= 0, np.take_along_axis(s, pos, axis=1), np.nan).astype(np.float32)
    return [[row_ids[r] for r in row if r >= 0] for row in kept], scores
