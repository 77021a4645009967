"""Minibatch loader: producer threads read Parquet and assemble tensors ahead of the GPU.

The sampling stage did all graph work, so producing a minibatch is Parquet
decoding, a few numpy copies and a feature gather; pyarrow and numpy release
the GIL for those, so threads give real overlap without the cost of worker
processes (no pickling of batches, one shared memory-mapped feature store).

Negatives. With a :class:`Draw`, each minibatch's easy negatives are a
subset of its stored pool and its hard negatives a subset of each query's
candidates, drawn from ``(seed, epoch, minibatch)`` alone (so a resumed run
draws what an uninterrupted one would); the computation graph is then cut
down to the layer-0 nodes in use, so unused pool items cost neither feature
gathers nor compute.

Order. Files are shuffled with ``(seed, epoch)``; the yielded sequence is the
rows of the first file in stored order, then the second file's, and so on.
File ``i`` of that order is read by worker ``i % num_workers`` into its own
bounded queue, and the consumer drains the queues in file order. The sequence
therefore depends only on ``(files, seed, epoch, shuffle)``: not on
``prefetch``, ``num_workers`` or thread timing, so a run can be reproduced
with a different loader configuration.

Shutdown. Producers check a stop event and ``put`` with a timeout, so they
never block forever on a full queue. The consumer sets the event and joins
the threads at the end of data, on ``close()`` / ``with`` exit, when the
iterator is closed or garbage-collected (e.g. after ``break``), and when an
exception (including KeyboardInterrupt) leaves the iteration. A producer's
exception is re-raised in the consumer as :class:`LoaderError` at its place in
the sequence, carrying the producer's traceback text.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.data.features import FeatureStore

log = logging.getLogger(__name__)

_PUT_TIMEOUT_S = 0.1
_GET_TIMEOUT_S = 0.1
_JOIN_TIMEOUT_S = 30.0

_LIST_COLUMNS = ("query", "positive", "easy")
_NESTED_COLUMNS = ("hard", "nodes", "nbr_idx", "nbr_weight")


@dataclass(frozen=True)
class Draw:
    """Negatives one pass uses: ``easy`` pool slots and ``hard`` candidates per query.

    None takes every one stored. The draw depends only on ``(seed, epoch)`` and
    the minibatch id.
    """

    easy: int | None
    hard: int | None
    seed: int
    epoch: int


class LoaderError(RuntimeError):
    """A producer failed; the message holds its traceback, ``__cause__`` the exception."""


@dataclass
class Minibatch:
    """One minibatch as tensors; indices are local (into layer 0 or layer k+1)."""

    nodes: list[torch.Tensor]
    features: torch.Tensor
    nbr_idx: list[torch.Tensor]
    nbr_weight: list[torch.Tensor]
    query: torch.Tensor
    positive: torch.Tensor
    easy: torch.Tensor
    hard: torch.Tensor
    batch_id: int

    @property
    def num_layers(self) -> int:
        return len(self.nbr_idx)

    def _map(self, fn) -> "Minibatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = fn(v)
            elif isinstance(v, list):
                v = [fn(t) for t in v]
            out[f.name] = v
        return Minibatch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Minibatch":
        """Copy to ``device``; asynchronous from pinned memory when ``non_blocking``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Minibatch":
        """Page-locked copy, so ``to(cuda, non_blocking=True)`` overlaps compute."""
        return self._map(lambda t: t.pin_memory())


def list_batch_files(batches_dir: str | os.PathLike, split: str, rank: int = 0,
                     world_size: int = 1) -> list[str]:
    """This rank's Parquet files of ``split``: sorted, then every ``world_size``-th.

    Ranks get disjoint sets that together cover the split; a rank may get
    fewer files (or none) when files do not divide evenly.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    root = Path(batches_dir) / split
    if not root.is_dir():
        raise FileNotFoundError(f"no '{split}' minibatches under {batches_dir}")
    files = sorted(str(p) for p in root.glob("part-*.parquet"))
    return [f for i, f in enumerate(files) if i % world_size == rank]


def read_batches(files: Sequence[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Rows of ``files`` in order, one row group in memory at a time.

    Each row is a dict: ``batch`` int, ``query``/``positive``/``easy`` 1-D
    arrays, ``hard``/``nodes``/``nbr_idx``/``nbr_weight`` lists of 1-D arrays.
    Arrays are read-only views of the Arrow buffers.
    """
    for path in files:
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            for rb in table.to_batches():
                batch_ids = rb.column("batch").to_numpy()
                flat = {}
                for name in _LIST_COLUMNS:
                    col = rb.column(name)
                    flat[name] = (col.offsets.to_numpy(),
                                  col.values.to_numpy(zero_copy_only=False))
                nested = {}
                for name in _NESTED_COLUMNS:
                    col = rb.column(name)
                    nested[name] = (col.offsets.to_numpy(), col.values.offsets.to_numpy(),
                                    col.values.values.to_numpy(zero_copy_only=False))
                for r in range(rb.num_rows):
                    row: dict[str, Any] = {"batch": int(batch_ids[r])}
                    for name, (off, vals) in flat.items():
                        row[name] = vals[off[r]:off[r + 1]]
                    for name, (outer, inner, vals) in nested.items():
                        bounds = inner[outer[r]:outer[r + 1] + 1]
                        row[name] = (np.split(vals[bounds[0]:bounds[-1]], bounds[1:-1] - bounds[0])
                                     if len(bounds) > 1 else [])
                    yield row


def _tensor(a: np.ndarray, dtype) -> torch.Tensor:
    # A copy: Arrow buffers are read-only, and the copy is also the dtype widening.
    return torch.from_numpy(np.array(a, dtype=dtype))


def _check_index(name: str, idx: np.ndarray, size: int, batch_id: int, allow_pad: bool) -> None:
    if idx.size == 0:
        return
    lo = -1 if allow_pad else 0
    if idx.min() < lo or idx.max() >= size:
        raise ValueError(f"minibatch {batch_id}: {name} indices must be in [{lo}, {size}), "
                         f"got min {idx.min()} max {idx.max()}")


def _pad_ragged(rows: list[np.ndarray]) -> np.ndarray:
    """``(len(rows), max_len)`` int64 array, rows left-aligned, padded with -1."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    out = np.full((len(rows), width), -1, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        starts = np.cumsum(lengths) - lengths
        rr = np.repeat(np.arange(len(rows)), lengths)
        cc = np.arange(total) - np.repeat(starts, lengths)
        out[rr, cc] = np.concatenate(rows)
    return out


def draw_negatives(easy: np.ndarray, hard: np.ndarray, draw: Draw, batch_id: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``draw.easy`` of the ``easy`` pool slots and up to ``draw.hard`` of each row of ``hard``.

    ``hard`` is ``(queries, width)`` padded with -1; the result keeps that
    padding where a query has fewer candidates. Uniform without replacement.
    """
    gen = np.random.default_rng([draw.seed % 2**64, draw.epoch, batch_id])
    if draw.easy is not None and draw.easy < len(easy):
        easy = easy[np.sort(gen.choice(len(easy), size=draw.easy, replace=False))]
    if draw.hard is not None and draw.hard < hard.shape[1]:
        keys = gen.random(hard.shape)
        keys[hard < 0] = 2.0  # padding sorts last
        hard = np.take_along_axis(hard, np.argsort(keys, axis=1)[:, :draw.hard], axis=1)
    return easy, hard


def prune(layers: list[np.ndarray], nbr_idx: list[np.ndarray], nbr_weight: list[np.ndarray],
          keep: np.ndarray):
    """The computation graph of the layer-0 nodes ``keep`` (sorted local indices) alone.

    Returns ``(layers, nbr_idx, nbr_weight, remap)`` in the stored layout
    (each layer a prefix of the next) and ``remap``: old layer-0 index -> new
    (-1 if dropped). Each kept node has the same neighbours and weights, in
    the same order, so its embedding is unchanged.
    """
    sel = keep
    out_layers, out_idx, out_w = [layers[0][sel]], [], []
    for k in range(len(nbr_idx)):
        idx = nbr_idx[k][sel]
        valid = idx >= 0
        nxt = np.concatenate([sel, np.setdiff1d(idx[valid], sel)])
        remap = np.full(len(layers[k + 1]), -1, dtype=np.int64)
        remap[nxt] = np.arange(len(nxt))
        out_idx.append(np.where(valid, remap[np.maximum(idx, 0)], -1))
        out_w.append(nbr_weight[k][sel])
        out_layers.append(layers[k + 1][nxt])
        sel = nxt
    remap0 = np.full(len(layers[0]), -1, dtype=np.int64)
    remap0[keep] = np.arange(len(keep))
    return out_layers, out_idx, out_w, remap0


def assemble(row: dict[str, Any], store: FeatureStore, num_neighbors: int,
             draw: Draw | None = None) -> Minibatch:
    """Tensors for one row of :func:`read_batches`, with the deepest layer's features.

    Shapes and index ranges are checked here, so that a mismatch between the
    sampling config and the trainer's (``num_neighbors``, layers) fails with
    a clear message instead of an out-of-bounds index on the GPU. With a
    ``draw``, only the drawn negatives and their computation graph are kept.
    """
    bid = int(row["batch"])
    layers = [np.asarray(n) for n in row["nodes"]]
    k = len(layers) - 1
    if k < 0:
        raise ValueError(f"minibatch {bid} has no node layers")
    if len(row["nbr_idx"]) != k or len(row["nbr_weight"]) != k:
        raise ValueError(f"minibatch {bid}: {len(layers)} node layers need {k} neighbour "
                         f"tables, got {len(row['nbr_idx'])} indices and "
                         f"{len(row['nbr_weight'])} weights")
    t = int(num_neighbors)
    nbr_idx, nbr_weight = [], []
    for i in range(k):
        n_i, n_next = len(layers[i]), len(layers[i + 1])
        if not np.array_equal(layers[i + 1][:n_i], layers[i]):
            raise ValueError(f"minibatch {bid}: layer {i} is not a prefix of layer {i + 1}")
        idx, w = np.asarray(row["nbr_idx"][i]), np.asarray(row["nbr_weight"][i])
        if idx.size != n_i * t or w.size != n_i * t:
            raise ValueError(f"minibatch {bid}: layer {i} has {n_i} nodes, so {n_i}x{t} "
                             f"neighbours with num_neighbors={t}, got {idx.size} indices and "
                             f"{w.size} weights; does num_neighbors match the sampling config?")
        _check_index(f"nbr_idx[{i}]", idx, n_next, bid, allow_pad=True)
        nbr_idx.append(idx.astype(np.int64).reshape(n_i, t))
        nbr_weight.append(w.astype(np.float32).reshape(n_i, t))
    n0 = len(layers[0])
    query, positive, easy = (np.asarray(row[name], dtype=np.int64)
                             for name in ("query", "positive", "easy"))
    for name, v in (("query", query), ("positive", positive), ("easy", easy)):
        _check_index(name, v, n0, bid, allow_pad=False)
    if len(row["hard"]) != len(query):
        raise ValueError(f"minibatch {bid}: {len(query)} queries but "
                         f"{len(row['hard'])} hard-negative lists")
    hard = _pad_ragged(row["hard"])
    _check_index("hard", hard, n0, bid, allow_pad=True)
    if draw is not None:
        easy, hard = draw_negatives(easy, hard, draw, bid)
        keep = np.unique(np.concatenate([query, positive, easy, hard[hard >= 0]]))
        layers, nbr_idx, nbr_weight, remap = prune(layers, nbr_idx, nbr_weight, keep)
        query, positive, easy = remap[query], remap[positive], remap[easy]
        hard = np.where(hard >= 0, remap[np.maximum(hard, 0)], -1)
    return Minibatch(
        nodes=[_tensor(n, np.int64) for n in layers],
        features=torch.from_numpy(store.gather(layers[k])),
        nbr_idx=[torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)) for x in nbr_idx],
        nbr_weight=[torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                    for x in nbr_weight],
        query=torch.from_numpy(query.copy()),
        positive=torch.from_numpy(positive.copy()),
        easy=torch.from_numpy(easy.copy()),
        hard=torch.from_numpy(np.ascontiguousarray(hard, dtype=np.int64)),
        batch_id=bid,
    )


class _Failure:
    """A producer's exception with its traceback text, queued in sequence order."""

    def __init__(self, worker: int, path: str, exc: BaseException, text: str):
        self.worker, self.path, self.exc, self.text = worker, path, exc, text


class _EndOfFile:
    pass


_EOF = _EndOfFile()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless stopped; False when the consumer has gone away."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_PUT_TIMEOUT_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(worker: int, files: list[str], store: FeatureStore, num_neighbors: int,
             draw: Draw | None, pin: bool, q: queue.Queue, stop: threading.Event) -> None:
    """Worker body: a module function, so a thread never keeps the loader alive."""
    path = ""
    try:
        for path in files:
            for row in read_batches([path]):
                if stop.is_set():
                    return
                mb = assemble(row, store, num_neighbors, draw)
                if pin:
                    mb = mb.pin_memory()
                if not _put(q, mb, stop):
                    return
            if not _put(q, _EOF, stop):
                return
    except BaseException as exc:  # forwarded whole: the consumer decides what to raise
        _put(q, _Failure(worker, path, exc, traceback.format_exc()), stop)


def _shutdown(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        if t is not threading.current_thread():
            t.join(timeout=_JOIN_TIMEOUT_S)
            if t.is_alive():
                log.warning("%s still running %.0fs after stop (blocked in a read?)",
                            t.name, _JOIN_TIMEOUT_S)


class BatchLoader:
    """Iterable of :class:`Minibatch` over Parquet files, prefetched by producer threads.

    ``prefetch`` is the bound of each worker's queue; 0 reads and assembles
    synchronously in the consumer's thread (same sequence, no threads).
    ``easy_negatives``/``hard_negatives``: how many of each minibatch's stored
    easy-negative slots and hard candidates per query a pass draws (a
    :class:`Draw` keyed by ``seed`` and the epoch); None for both keeps every
    stored negative and the whole stored graph.
    ``wait_seconds`` is the time the consumer spent waiting for data during
    the current (or last) pass: queue waits, or the whole read+assemble time
    when synchronous. Use as a context manager, or call ``close()``, to stop
    the producers when leaving a pass early.
    """

    def __init__(self, files: Sequence[str | os.PathLike], store: FeatureStore,
                 num_neighbors: int, prefetch: int = 4, num_workers: int = 1,
                 pin_memory: bool = False, seed: int = 0, shuffle: bool = True, epoch: int = 0,
                 easy_negatives: int | None = None, hard_negatives: int | None = None):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.files = [str(f) for f in files]
        self.store = store
        self.num_neighbors = int(num_neighbors)
        self.prefetch = int(prefetch)
        self.num_workers = int(num_workers)
        # Pinning needs a CUDA context; on a CPU host it is neither possible nor useful.
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = int(epoch)
        self.easy_negatives, self.hard_negatives = easy_negatives, hard_negatives
        self.wait_seconds = 0.0
        self.threads: list[threading.Thread] = []
        self._stop: threading.Event | None = None
        self._num_batches: int | None = None

    def set_epoch(self, epoch: int, hard_negatives: int | None = None) -> None:
        """Reshuffle and redraw negatives for the next pass (like DistributedSampler.set_epoch).

        ``hard_negatives``: the pass's hard negatives per query (the curriculum's).
        """
        self.epoch = int(epoch)
        if hard_negatives is not None:
            self.hard_negatives = int(hard_negatives)

    def draw(self) -> Draw | None:
        """The negatives of this epoch's pass; None keeps every stored one."""
        if self.easy_negatives is None and self.hard_negatives is None:
            return None
        return Draw(self.easy_negatives, self.hard_negatives, self.seed, self.epoch)

    def file_order(self) -> list[str]:
        """The files in the order of this epoch's pass."""
        if not self.shuffle:
            return list(self.files)
        rng = np.random.default_rng([self.seed, self.epoch])
        return [self.files[i] for i in rng.permutation(len(self.files))]

    def __len__(self) -> int:
        """Minibatches per pass, from the Parquet footers (one row per minibatch)."""
        if self._num_batches is None:
            self._num_batches = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        return self._num_batches

    def __iter__(self) -> Iterator[Minibatch]:
        self.close()
        self.wait_seconds = 0.0
        order = self.file_order()
        if self.prefetch == 0:
            return self._iter_sync(order)
        return self._iter_threaded(order)

    def _iter_sync(self, order: list[str]) -> Iterator[Minibatch]:
        path, draw = "", self.draw()
        try:
            for path in order:
                rows = read_batches([path])
                while True:
                    t0 = time.perf_counter()
                    row = next(rows, None)
                    if row is None:
                        break
                    mb = assemble(row, self.store, self.num_neighbors, draw)
                    if self.pin_memory:
                        mb = mb.pin_memory()
                    self.wait_seconds += time.perf_counter() - t0
                    yield mb
        except Exception as exc:
            raise LoaderError(f"reading minibatches from {path} failed:\n"
                              f"{traceback.format_exc()}") from exc

    def _iter_threaded(self, order: list[str]) -> Iterator[Minibatch]:
        n_workers = min(self.num_workers, len(order))
        stop = threading.Event()
        queues = [queue.Queue(maxsize=self.prefetch) for _ in range(n_workers)]
        threads = [
            threading.Thread(target=_produce, name=f"batch-producer-{w}", daemon=True,
                             args=(w, order[w::n_workers], self.store, self.num_neighbors,
                                   self.draw(), self.pin_memory, queues[w], stop))
            for w in range(n_workers)]
        # Each pass owns its event and threads, so a stale iterator being
        # collected later can only stop its own producers.
        self._stop, self.threads = stop, threads
        for t in threads:
            t.start()
        try:
            for i in range(len(order)):
                w = i % n_workers
                while True:
                    item = self._get(queues[w], threads[w])
                    if item is _EOF:
                        break
                    if isinstance(item, _Failure):
                        raise LoaderError(
                            f"batch producer {item.worker} failed on {item.path}:\n"
                            f"{item.text}") from item.exc
                    yield item
        finally:
            _shutdown(stop, threads)

    def _get(self, q: queue.Queue, thread: threading.Thread) -> Any:
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    return q.get(timeout=_GET_TIMEOUT_S)
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise LoaderError(f"{thread.name} exited without finishing its files")
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Stop the producers of the current pass and join them; idempotent."""
        if self._stop is not None:
            _shutdown(self._stop, self.threads)
            self._stop = None

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
