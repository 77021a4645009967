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

from pipeline.model import PinSage, build_model

MESSAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}

# The layer tables between stages: representation ``h`` (always float32) and
# the message the next layer needs from this node (``infer.message_dtype``).
LAYER_SCHEMA = "node long, id string, h binary, msg binary"
LAYER_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()), ("h", pa.binary()),
                         ("msg", pa.binary())])
EMBEDDING_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()),
                             ("embedding", pa.list_(pa.float32()))])
# Slot of the row that carries a node's own representation in a reduce input.
SELF_SLOT = -1
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
    """Inverse of :func:`encode`: (n, dim) float32, whatever ``dtype`` was shipped."""
    if isinstance(cells, pa.ChunkedArray):
        cells = cells.combine_chunks()
    n = len(cells)
    width = dim * torch.empty(0, dtype=dtype).element_size()
    if n == 0 or width == 0:
        return torch.zeros((n, dim), dtype=torch.float32)
    offsets = np.frombuffer(cells.buffers()[1], np.int32, count=n + 1, offset=cells.offset * 4)
    if not (np.diff(offsets) == width).all():
        raise ValueError(f"vector cells are not all {width} bytes ({dim} x {dtype})")
    raw = np.frombuffer(cells.buffers()[2], np.uint8, count=n * width, offset=int(offsets[0]))
    return torch.from_numpy(raw.copy()).view(dtype).reshape(n, dim).to(torch.float32)


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


class _Rows:
    """One reduce batch split into self rows and message rows, as NumPy/PyTorch."""

    def __init__(self, node_s, id_s, h, node_m, slot_m, w_m, msg):
        self.node_s, self.id_s, self.h = node_s, id_s, h
        self.node_m, self.slot_m, self.w_m, self.msg = node_m, slot_m, w_m, msg

    @classmethod
    def of(cls, rb: pa.RecordBatch, in_dim: int, msg_dim: int, dtype: torch.dtype) -> "_Rows":
        slot = _numpy(rb, "slot", np.int32)
        is_self = slot == SELF_SLOT
        own, sent = np.flatnonzero(is_self), np.flatnonzero(~is_self)
        node = _numpy(rb, "node", np.int64)
        payload = rb.column("payload")
        return cls(node[own], rb.column("id").take(pa.array(own)),
                   decode(payload.take(pa.array(own)), in_dim),
                   node[sent], slot[sent], _numpy(rb, "weight", np.float32)[sent],
                   decode(payload.take(pa.array(sent)), msg_dim, dtype))

    def split(self, last_node: int) -> tuple["_Rows", "_Rows"]:
        """(rows of nodes before ``last_node``, rows of ``last_node``): both inputs sorted."""
        s = int(np.searchsorted(self.node_s, last_node))
        m = int(np.searchsorted(self.node_m, last_node))
        return self._take(slice(0, s), slice(0, m)), self._take(slice(s, None), slice(m, None))

    def _take(self, s: slice, m: slice) -> "_Rows":
        return _Rows(self.node_s[s], self.id_s[s], self.h[s], self.node_m[m], self.slot_m[m],
                     self.w_m[m], self.msg[m])

    def __add__(self, other: "_Rows") -> "_Rows":
        return _Rows(np.concatenate([self.node_s, other.node_s]),
                     pa.concat_arrays([self.id_s, other.id_s]),
                     torch.cat([self.h, other.h]), np.concatenate([self.node_m, other.node_m]),
                     np.concatenate([self.slot_m, other.slot_m]),
                     np.concatenate([self.w_m, other.w_m]), torch.cat([self.msg, other.msg]))

    def __len__(self) -> int:
        return len(self.node_s) + len(self.node_m)


def dense_messages(node_s: np.ndarray, node_m: np.ndarray, slot_m: np.ndarray, w_m: np.ndarray,
                   msg: torch.Tensor, num_neighbors: int):
    """Scatter message rows into the trainer's fixed-fanout tensors.

    Returns ``(msgs (n, T, M), weight (n, T), mask (n, T))`` for the sorted
    nodes ``node_s``; each message keeps its slot in the ``neighbors`` list, so
    the tensors are exactly those the in-memory gather builds. A message for a
    node without a self row (not an item of this graph) is dropped.
    """
    n = len(node_s)
    g = np.searchsorted(node_s, node_m)
    ok = (g < n) & (node_s[np.minimum(g, max(n - 1, 0))] == node_m) if n else np.zeros(len(g), bool)
    g, s = g[ok], slot_m[ok].astype(np.int64)
    msgs = torch.zeros((n, num_neighbors, msg.shape[1]), dtype=torch.float32)
    weight = torch.zeros((n, num_neighbors), dtype=torch.float32)
    mask = torch.zeros((n, num_neighbors), dtype=torch.bool)
    gt, st = torch.from_numpy(g), torch.from_numpy(s)
    msgs[gt, st] = msg[torch.from_numpy(np.flatnonzero(ok))]
    weight[gt, st] = torch.from_numpy(w_m[ok])
    mask[gt, st] = True
    return msgs, weight, mask


def reduce_layer(model: PinSage, k: int, batches: Iterator[pa.RecordBatch], *,
                 num_neighbors: int, message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """Conv ``k`` for every node of one partition sorted by ``(node, slot)``.

    Input rows: ``(node, id, slot, weight, payload)``, the node's own ``h`` at
    ``slot = SELF_SLOT`` and each neighbour's message at its slot. A node's rows
    may straddle two Arrow batches, so the last node of each batch waits for
    the next one. Output: layer ``k + 1`` rows, or the embeddings after the
    last conv.
    """
    conv = model.convs[k]
    last = k == model.num_layers - 1
    carry: _Rows | None = None

    def run(rows: _Rows) -> pa.RecordBatch:
        msgs, weight, mask = dense_messages(rows.node_s, rows.node_m, rows.slot_m, rows.w_m,
                                            rows.msg, num_neighbors)
        with torch.no_grad():
            h = fixed_shape(conv.combine, rows.h, msgs, weight, mask)
            return (embedding_batch(rows.node_s, rows.id_s, h) if last
                    else layer_batch(model, k + 1, rows.node_s, rows.id_s, h, message_dtype))

    for rb in batches:
        if rb.num_rows == 0:
            continue
        rows = _Rows.of(rb, conv.in_dim, conv.message_dim, message_dtype)
        if carry is not None:
            rows = carry + rows
        tail_node = int(_numpy(rb, "node", np.int64)[-1])
        done, carry = rows.split(tail_node)
        if len(done.node_s):
            yield run(done)
    if carry is not None and len(carry.node_s):
        yield run(carry)
