"""The numeric work of bottom-up inference on Arrow batches (no Spark needed).

Each function takes and returns ``pyarrow.RecordBatch`` so that Spark's
``mapInArrow`` can call it; the maths is the trainer's own
(``PinSage.input_layer``, ``PinSageConv.message`` and ``PinSageConv.combine``).
Vectors travel between stages as fixed-width ``binary`` cells (the raw bytes of
one row), which Arrow hands to NumPy/PyTorch without a per-value conversion.
"""
from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipeline.io.arrays import pad_lists
from pipeline.model import PinSage, build_model

MESSAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}

# The layer tables between stages: representation ``h`` (always float32) and
# the message the next layer needs from this node (``infer.message_dtype``).
LAYER_SCHEMA = "node long, id string, h binary, msg binary"
LAYER_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()), ("h", pa.binary()),
                         ("msg", pa.binary())])
# Each node's neighbour list: T int64 ids (-1 padding) and T float32 weights.
ADJACENCY_SCHEMA = "node long, nbrs binary, wts binary"
ADJACENCY_ARROW = pa.schema([("node", pa.int64()), ("nbrs", pa.binary()), ("wts", pa.binary())])
EMBEDDING_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()),
                             ("embedding", pa.list_(pa.float32()))])
# Kinds of reduce input rows: a neighbour's message, then a node's own row.
MESSAGE, OWN = 0, 1
# Rows per model call. Matrix kernels pick their blocking (hence their rounding)
# from the shapes, so every call sees exactly this many rows, the last chunk
# zero-padded: a node's bits never depend on which nodes share its batch, and a
# run over any partitioning, or over only the changed part of the graph
# (:mod:`pipeline.infer.incremental`), equals a full run bit for bit.
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class ModelBlob:
    """What is broadcast to the executors: the model's spec and its weights as bytes."""

    spec: dict
    state: bytes
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, model: PinSage, spec: dict) -> "ModelBlob":
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return cls(dict(spec), buf.getvalue())

    def build(self) -> PinSage:
        from types import SimpleNamespace
        model = build_model(SimpleNamespace(**self.spec), self.spec["feature_dim"],
                            self.spec["num_items"])
        model.load_state_dict(torch.load(io.BytesIO(self.state), weights_only=True))
        return model.eval()


_MODELS: dict[str, PinSage] = {}


def model_of(blob: ModelBlob) -> PinSage:
    """The model, built once per Python worker (Spark reuses workers across tasks)."""
    if blob.token not in _MODELS:
        _MODELS.clear()
        _MODELS[blob.token] = blob.build()
    return _MODELS[blob.token]


def encode(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> pa.BinaryArray:
    """Rows of ``x`` (n, d) as n binary cells holding their ``dtype`` bytes."""
    raw = x.detach().to(dtype).contiguous().view(torch.uint8).numpy()
    n, width = raw.shape if raw.ndim == 2 else (len(raw), 0)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)[:n + 1]
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(raw.tobytes())])


def decode(cells: pa.Array, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`encode`: (n, dim) float32, whatever float ``dtype`` was shipped."""
    return raw(cells, dim, dtype).to(torch.float32)


def raw(cells: pa.Array, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The (n, dim) ``dtype`` values :func:`encode` wrote into ``cells``."""
    if isinstance(cells, pa.ChunkedArray):
        cells = cells.combine_chunks()
    n = len(cells)
    width = dim * torch.empty(0, dtype=dtype).element_size()
    if n == 0 or width == 0:
        return torch.zeros((n, dim), dtype=dtype)
    offsets = np.frombuffer(cells.buffers()[1], np.int32, count=n + 1, offset=cells.offset * 4)
    if not (np.diff(offsets) == width).all():
        raise ValueError(f"vector cells are not all {width} bytes ({dim} x {dtype})")
    data = np.frombuffer(cells.buffers()[2], np.uint8, count=n * width, offset=int(offsets[0]))
    return torch.from_numpy(data.copy()).view(dtype).reshape(n, dim)


def no_neighbors(num_neighbors: int) -> tuple[bytes, bytes]:
    """The ``ADJACENCY`` cells of a node without a neighbour list."""
    return (np.full(num_neighbors, -1, np.int64).tobytes(),
            np.zeros(num_neighbors, np.float32).tobytes())


def adjacency(batches: Iterator[pa.RecordBatch], num_neighbors: int) -> Iterator[pa.RecordBatch]:
    """``neighbors`` rows -> ``ADJACENCY`` rows: each list as fixed-width binary cells.

    Spark turns binary cells into Arrow far faster than arrays, and the reduce
    ships every node's list in every layer.
    """
    for rb in batches:
        ids, w = pad_lists(rb.column("neighbors"), rb.column("weights"), num_neighbors)
        yield pa.RecordBatch.from_arrays(
            [rb.column("node"), encode(torch.from_numpy(ids), torch.int64),
             encode(torch.from_numpy(w))], schema=ADJACENCY_ARROW)


def _numpy(batch: pa.RecordBatch, name: str, dtype) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _features(batch: pa.RecordBatch, dim: int) -> torch.Tensor | None:
    if dim == 0:
        return None
    feats = batch.column("features")
    offsets = feats.offsets.to_numpy()
    values = feats.values.slice(offsets[0], offsets[-1] - offsets[0])
    return torch.from_numpy(values.to_numpy(zero_copy_only=False).astype(np.float32)
                            .reshape(len(batch), dim))


def fixed_shape(fn, *xs: torch.Tensor) -> torch.Tensor:
    """``fn`` applied row-wise to ``xs`` in calls of exactly ``CHUNK_ROWS`` rows."""
    n = xs[0].shape[0]
    out = []
    for start in range(0, n, CHUNK_ROWS):
        part = [x[start:start + CHUNK_ROWS] for x in xs]
        m = part[0].shape[0]
        if m < CHUNK_ROWS:
            part = [torch.cat([p, p.new_zeros((CHUNK_ROWS - m, *p.shape[1:]))]) for p in part]
        out.append(fn(*part)[:m])
    return torch.cat(out) if out else fn(*xs)


def layer_batch(model: PinSage, k: int, node: np.ndarray, ids: pa.Array, h: torch.Tensor,
                message_dtype: torch.dtype) -> pa.RecordBatch:
    """Rows of ``LAYER_SCHEMA``: ``h`` after ``k`` convolutions and conv ``k``'s message."""
    msg = fixed_shape(model.convs[k].message, h)
    return pa.RecordBatch.from_arrays(
        [pa.array(node, pa.int64()), ids, encode(h), encode(msg, message_dtype)],
        schema=LAYER_ARROW)


def embedding_batch(node: np.ndarray, ids: pa.Array, h: torch.Tensor) -> pa.RecordBatch:
    """Rows of ``schemas.EMBEDDINGS``: the final representations, L2-normalised."""
    z = fixed_shape(lambda x: F.normalize(x, dim=-1, eps=1e-12), h).contiguous().numpy().astype(np.float32, copy=False)
    n, d = z.shape
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)[:n + 1]),
                                   pa.array(z.reshape(-1)))
    return pa.RecordBatch.from_arrays([pa.array(node, pa.int64()), ids, emb],
                                      schema=EMBEDDING_ARROW)


def input_layer(model: PinSage, batches: Iterator[pa.RecordBatch], *, last: bool,
                message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """Items ``(node, id, features)`` -> layer 0 (or the embeddings when K = 0)."""
    for rb in batches:
        if rb.num_rows == 0:
            continue
        node = _numpy(rb, "node", np.int64)
        with torch.no_grad():
            feats = _features(rb, model.feature_dim)
            h = (fixed_shape(model.input_layer, torch.tensor(node), feats) if feats is not None
                 else fixed_shape(lambda n: model.input_layer(n, None), torch.tensor(node)))
            yield (embedding_batch(node, rb.column("id"), h) if last
                   else layer_batch(model, 0, node, rb.column("id"), h, message_dtype))


def gather_messages(nbr: np.ndarray, weight: np.ndarray, sender: np.ndarray, msg: torch.Tensor):
    """The trainer's fixed-fanout tensors from padded neighbour lists and the messages at hand.

    ``nbr``/``weight`` (n, T): each node's list (-1 padding); ``sender`` (sorted,
    unique) and ``msg``: the messages this partition received. Returns ``(msgs
    (n, T, M), weight (n, T), mask (n, T))``; each message keeps its slot, so
    the tensors are exactly those the in-memory gather builds. A slot whose
    message did not come (padding, or a neighbour that is not an item) is masked.
    """
    pos = np.searchsorted(sender, nbr)
    found = (nbr >= 0) & (pos < len(sender))
    found[found] = sender[pos[found]] == nbr[found]
    mask = torch.from_numpy(found)
    msgs = torch.zeros((*nbr.shape, msg.shape[1]), dtype=torch.float32)
    msgs[mask] = msg[torch.from_numpy(pos[found])]
    return msgs, torch.from_numpy(np.where(found, weight, 0).astype(np.float32)), mask


def reduce_layer(model: PinSage, k: int, batches: Iterator[pa.RecordBatch], *,
                 num_neighbors: int, message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """Conv ``k`` for the nodes of one partition.

    Input rows (``REDUCE_SCHEMA``), sorted by ``(kind, node)``: first the
    messages this partition needs (``kind = MESSAGE``, ``node`` = the sender),
    each once, then each node's own row (``kind = OWN``: ``h`` and its
    ``ADJACENCY`` cells). Output: layer ``k + 1`` rows, or the embeddings after
    the last conv.
    """
    conv = model.convs[k]
    last = k == model.num_layers - 1
    senders, received = [], []
    sender = msg = None
    for rb in batches:
        if rb.num_rows == 0:
            continue
        kind = _numpy(rb, "kind", np.int8)
        n_msg = int(np.searchsorted(kind, OWN))           # kinds are sorted: messages first
        if n_msg:
            senders.append(_numpy(rb, "node", np.int64)[:n_msg])
            received.append(decode(rb.column("payload").slice(0, n_msg), conv.message_dim,
                                   message_dtype))
        if n_msg == rb.num_rows:
            continue
        if sender is None:
            sender = np.concatenate(senders) if senders else np.zeros(0, np.int64)
            msg = (torch.cat(received) if received
                   else torch.zeros((0, conv.message_dim), dtype=torch.float32))
            senders = received = None
        own = rb.slice(n_msg)
        nbr = raw(own.column("nbrs"), num_neighbors, torch.int64).numpy()
        weight = raw(own.column("wts"), num_neighbors, torch.float32).numpy()
        msgs, weight, mask = gather_messages(nbr, weight, sender, msg)
        node = _numpy(own, "node", np.int64)
        with torch.no_grad():
            h = fixed_shape(conv.combine, decode(own.column("payload"), conv.in_dim), msgs,
                            weight, mask)
            yield (embedding_batch(node, own.column("id"), h) if last
                   else layer_batch(model, k + 1, node, own.column("id"), h, message_dtype))
