"""Nearest-neighbour search with faiss: exact for evaluation, approximate for serving.

Embeddings are L2-normalised, so the inner product is the cosine. Evaluation
ranks with an exact ``IndexFlatIP`` (no approximation error in the metrics);
the ``index`` stage publishes an approximate index (HNSW or IVF) for serving
(:mod:`pipeline.serve`), with its recall@K against the exact one in the manifest.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import EvalConfig, choices
from pipeline.errors import PipelineError
from pipeline.io import versioned
from pipeline.io.embeddings import list_column, read_embeddings
from pipeline.io.kinds import RETIRED_ID
from pipeline.io.stage import Stage
from pipeline.metrics import drop_query

log = logging.getLogger(__name__)

STAGE = "index"
INDEX_FILE = "index.faiss"
ITEMS_TABLE = "items"           # row of the index -> node, id (schemas.INDEX_ITEMS)
INDEX_TYPES = choices(EvalConfig, "index")
SEARCH_CHUNK = 4096


def exact_index(matrix: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index


def approximate_index(matrix: np.ndarray, kind: str, *, m: int = 32, ef_construction: int = 200,
                      ef_search: int = 128, nlist: int = 0, nprobe: int = 16, seed: int = 0
                      ) -> faiss.Index:
    """HNSW (graph; no training) or IVF-Flat (k-means cells; ``nlist`` 0 = about 4 sqrt(N))."""
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        # faiss wants at least 39 training points per cell.
        cells = max(1, min(nlist or int(4 * np.sqrt(n)), n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, cells)
    else:
        raise PipelineError(f"eval.index must be one of {', '.join(INDEX_TYPES)}, got '{kind}'")
    index.add(x)
    return index


def hnsw_bytes(n: int, d: int, m: int) -> int:
    """Estimated size of faiss's ``IndexHNSWFlat``: the vectors, 2m links per node on the
    bottom level and m on each upper level (a node reaches level l with probability m^-l),
    and a level number per node."""
    upper = m / (m - 1) if m > 1 else 0.0
    return int(n * (4 * d + 4 * (2 * m + upper) + 8))


def choose_index(kind: str, n: int, d: int, m: int, max_gb: float) -> tuple[str, str]:
    """``(index type, note)``: HNSW when it fits in ``max_gb`` GiB (0: half the memory
    available now), else IVF-Flat, which keeps only the vectors and a cell per item."""
    if kind != "hnsw":
        return kind, ""
    limit = max_gb * 2**30 if max_gb > 0 else psutil.virtual_memory().available / 2
    need = hnsw_bytes(n, d, m)
    if need <= limit:
        return kind, ""
    return "ivf", (f"hnsw over {n:,} items would need about {need / 2**30:.1f} GiB > "
                   f"{limit / 2**30:.1f} GiB (eval.index_max_gb; 0 = half the available "
                   f"memory): built ivf instead")


def search(index: faiss.Index, matrix: np.ndarray, queries: np.ndarray, k: int,
           query_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and scores for each query row, the query itself excluded.

    Asks for ``k + 1`` and drops the query, so every row keeps ``k`` results
    (``-1`` where the index has fewer). A query searches with its row of
    ``query_vectors`` (``PinSage.query``), or of ``matrix`` without them.
    """
    vectors = matrix if query_vectors is None else query_vectors
    rows, scores = [], []
    for lo in range(0, len(queries), SEARCH_CHUNK):
        q = queries[lo:lo + SEARCH_CHUNK]
        kept, s = search_vectors(index, vectors[q], q, k)
        rows.append(kept)
        scores.append(s)
    if not rows:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(rows), np.concatenate(scores)


def search_vectors(index: faiss.Index, vectors: np.ndarray, rows: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and float32 scores for query vectors whose own rows are ``rows`` (left out).

    ``-1`` rows and ``-inf`` scores where the index has fewer than ``k`` others.
    """
    k1 = min(k + 1, index.ntotal)
    s, i = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k1)
    kept = drop_query(i, rows, k)
    # Scores follow their items: look each kept item's score up in its row.
    pos = np.argmax(i[:, None, :] == kept[:, :, None], axis=2)
    return kept, np.where(kept >= 0, np.take_along_axis(s, pos, axis=1), -np.inf).astype(np.float32)


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    a, e = approx[:, :k], exact[:, :k]
    found = (a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)
    denom = np.maximum((e >= 0).sum(axis=1), 1)
    return float((found.any(axis=1).sum(axis=1) / denom).mean()) if len(a) else float("nan")


@dataclass
class IndexResult:
    version: str
    reused: bool
    manifest: dict


def _recall(index, matrix: np.ndarray, queries: np.ndarray, query_vectors: np.ndarray,
            ks) -> tuple[dict[str, float], float]:
    """``({"recall@K": ...}, seconds of the approximate search)`` against exact search."""
    exact_top, _ = search(exact_index(matrix), matrix, queries, max(ks), query_vectors)
    t0 = time.perf_counter()
    approx_top, _ = search(index, matrix, queries, max(ks), query_vectors)
    search_s = time.perf_counter() - t0
    return {f"recall@{k}": round(recall(approx_top, exact_top, k), 4) for k in ks}, search_s


def _write_items(path: Path, node: np.ndarray, ids: list[str], query_vectors: np.ndarray) -> str:
    """Write the ``items`` table (index row -> node, source id, the item's query vector);
    returns its schema's description for the manifest."""
    # Spark's schema types, imported only here: serving (similar_items) needs no PySpark.
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipeline.io import schemas
    table = pa.table({"node": pa.array(node, pa.int64()), "id": pa.array(ids, pa.string()),
                      "query": list_column(query_vectors)},
                     schema=to_arrow_schema(schemas.INDEX_ITEMS))
    path.mkdir()
    pq.write_table(table, path / "part-0.parquet")
    return schemas.describe(schemas.INDEX_ITEMS)


def publish_index(run_dir: str, ev, embeddings_version: str, queries: np.ndarray,
                  *, keep: int = 3, force: bool = False, seed: int = 0) -> IndexResult:
    """Build the approximate index over the published embeddings; publish stage ``index``.

    Only live items are served: placeholders of removed items (id
    ``RETIRED_ID``) keep an embedding row, so that items stay ``0 .. n-1``
    for evaluation, but are left out of the index. Recall@K (K in ``ev.ks``)
    is measured against the exact index on ``queries`` (row numbers of the
    embedding matrix, e.g. the test queries).
    """
    params = {"index": ev.index, "max_gb": ev.index_max_gb, "m": ev.index_m,
              "ef_construction": ev.index_ef_construction, "ef_search": ev.index_ef_search,
              "nlist": ev.index_nlist, "nprobe": ev.index_nprobe, "ks": list(ev.ks), "seed": seed}
    inputs = {"embeddings": embeddings_version}
    stage = Stage(run_dir, STAGE, inputs, params, keep=keep, force=force)
    found = stage.reusable()
    if found:
        return IndexResult(found, True, stage.manifest(found))
    emb = read_embeddings(run_dir, embeddings_version)
    live = np.array([i != RETIRED_ID for i in emb.id], dtype=bool)
    row_of = np.cumsum(live) - 1                 # embedding row -> index row (live rows)
    queries = row_of[queries[live[queries]]]
    matrix, query_vectors, node = emb.matrix[live], emb.queries[live], emb.node[live]
    ids = [i for i, ok in zip(emb.id, live) if ok]
    kind, note = choose_index(ev.index, *matrix.shape, ev.index_m, ev.index_max_gb)
    if note:
        log.warning("index: %s", note)
    t0 = time.perf_counter()
    index = approximate_index(matrix, kind, m=ev.index_m,
                              ef_construction=ev.index_ef_construction,
                              ef_search=ev.index_ef_search, nlist=ev.index_nlist,
                              nprobe=ev.index_nprobe, seed=seed)
    build_s = time.perf_counter() - t0
    quality, search_s = _recall(index, matrix, queries, query_vectors, ev.ks)
    with stage.publish() as out:
        faiss.write_index(index, str(out.path / INDEX_FILE))
        items_schema = _write_items(out.path / ITEMS_TABLE, node, ids, query_vectors)
        out.manifest.update({
            "counts": {"items": int(matrix.shape[0]), "dim": int(matrix.shape[1]),
                       "retired_items_left_out": int((~live).sum()),
                       "recall_queries": int(len(queries))},
            "quality": quality,
            "index": kind,
            "note": note,
            "seconds": {"build": round(build_s, 3),
                        "search_per_query_ms": round(1000 * search_s / max(1, len(queries)), 4)},
            "schema": {ITEMS_TABLE: items_schema},
        })
    log.info("index/%s: %s over %d items, %s", out.version, kind, matrix.shape[0], quality)
    return IndexResult(out.version, False, versioned.read_manifest(run_dir, STAGE, out.version))
