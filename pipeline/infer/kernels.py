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
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from pipeline.io.arrays import pad_lists
from pipeline.model import PinSage, build_model

MESSAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}

# Rows between stages, keyed by ``to`` (the reduce partition is Spark's hash
# partition of ``to``). A node's own row (``kind = OWN``, ``to = node``): its
# representation ``h`` (float32) in ``payload``, how many convolutions it is
# needed after (``depth``), its neighbour list (``nbrs``: T int64 ids, -1
# padding; ``wts``: T float32 weights) and ``fanout``: one node (int64) of each
# reduce partition where a node lists it as a neighbour. A message row
# (``kind = MESSAGE``): ``node``'s message for the next convolution
# (``infer.message_dtype``) in ``payload``, once per partition in its fanout.
STEP_SCHEMA = ("to long, kind int, node long, id string, depth int, payload binary, "
               "nbrs binary, wts binary, fanout binary")
STEP_ARROW = pa.schema([("to", pa.int64()), ("kind", pa.int32()), ("node", pa.int64()),
                        ("id", pa.string()), ("depth", pa.int32()), ("payload", pa.binary()),
                        ("nbrs", pa.binary()), ("wts", pa.binary()), ("fanout", pa.binary())])
EMBEDDING_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()),
                             ("embedding", pa.list_(pa.float32()))])
# Kinds of rows: messages sort before the nodes' own rows.
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


def _int64_cells(lists: pa.Array) -> pa.BinaryArray:
    """A list<int64> column as binary cells of its values' bytes (a null list: no bytes)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths) * 8]).astype(np.int32)
    values = lists.flatten().to_numpy().astype(np.int64, copy=False)
    return pa.Array.from_buffers(pa.binary(), len(lists), [None, pa.py_buffer(offsets),
                                                            pa.py_buffer(values.tobytes())])


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


def step_batches(model: PinSage, j: int, own: pa.RecordBatch, h: torch.Tensor,
                 message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """``STEP_ARROW`` rows after ``j`` convolutions: every node's conv-``j`` message to
    each partition of its fanout, and the own rows of the nodes needed after ``j + 1``.

    ``own``: the nodes' own rows (``node, id, depth, nbrs, wts, fanout``);
    ``h``: their representations after ``j`` convolutions.
    """
    n = own.num_rows
    fanout = own.column("fanout")
    ends = np.frombuffer(fanout.buffers()[1], np.int32, count=n + 1, offset=fanout.offset * 4)
    lengths = np.diff(ends) // 8
    to = (np.frombuffer(fanout.buffers()[2], np.int64, count=int(lengths.sum()),
                        offset=int(ends[0])) if n and lengths.sum() else np.zeros(0, np.int64))
    sender = np.repeat(np.arange(n), lengths)
    m = len(sender)
    if m:
        msg = fixed_shape(model.convs[j].message, h)[torch.from_numpy(sender)]
        yield pa.RecordBatch.from_arrays(
            [pa.array(to, pa.int64()), pa.array(np.full(m, MESSAGE, np.int32)),
             pa.array(_numpy(own, "node", np.int64)[sender]), pa.nulls(m, pa.string()),
             pa.nulls(m, pa.int32()), encode(msg, message_dtype), pa.nulls(m, pa.binary()),
             pa.nulls(m, pa.binary()), pa.nulls(m, pa.binary())], schema=STEP_ARROW)
    keep = _numpy(own, "depth", np.int32) > j
    if keep.all():
        yield own_batch(own, encode(h))
    elif keep.any():
        rows = np.flatnonzero(keep)
        yield own_batch(own.take(pa.array(rows)), encode(h[torch.from_numpy(rows)]))


def own_batch(own: pa.RecordBatch, h: pa.BinaryArray) -> pa.RecordBatch:
    """``STEP_ARROW`` own rows: ``own``'s columns with ``h`` as the payload."""
    n = own.num_rows
    return pa.RecordBatch.from_arrays(
        [own.column("node"), pa.array(np.full(n, OWN, np.int32)), own.column("node"),
         own.column("id"), own.column("depth"), h, own.column("nbrs"), own.column("wts"),
         own.column("fanout")], schema=STEP_ARROW)


def embedding_batch(node: np.ndarray, ids: pa.Array, h: torch.Tensor) -> pa.RecordBatch:
    """Rows of ``schemas.EMBEDDINGS``: the final representations, L2-normalised."""
    z = fixed_shape(lambda x: F.normalize(x, dim=-1, eps=1e-12), h).contiguous().numpy().astype(np.float32, copy=False)
    n, d = z.shape
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)[:n + 1]),
                                   pa.array(z.reshape(-1)))
    return pa.RecordBatch.from_arrays([pa.array(node, pa.int64()), ids, emb],
                                      schema=EMBEDDING_ARROW)


def input_layer(model: PinSage, batches: Iterator[pa.RecordBatch], *, num_neighbors: int,
                message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """Items -> layer 0 as ``STEP_ARROW`` rows, or the embeddings when K = 0.

    Input rows: ``node, id, features, depth`` and, when K > 0, the neighbour
    list (``neighbors``, ``weights``; null when the item has none) and
    ``fanout`` (list of int64, null when no item lists it).
    """
    for rb in batches:
        if rb.num_rows == 0:
            continue
        node = _numpy(rb, "node", np.int64)
        with torch.no_grad():
            feats = _features(rb, model.feature_dim)
            h = (fixed_shape(model.input_layer, torch.tensor(node), feats) if feats is not None
                 else fixed_shape(lambda n: model.input_layer(n, None), torch.tensor(node)))
            if model.num_layers == 0:
                yield embedding_batch(node, rb.column("id"), h)
                continue
            nbrs, wts = pad_lists(rb.column("neighbors"), rb.column("weights"), num_neighbors)
            own = pa.RecordBatch.from_arrays(
                [rb.column("node"), rb.column("id"), rb.column("depth").cast(pa.int32()),
                 encode(torch.from_numpy(nbrs), torch.int64), encode(torch.from_numpy(wts)),
                 _int64_cells(rb.column("fanout"))],
                names=["node", "id", "depth", "nbrs", "wts", "fanout"])
            yield from step_batches(model, 0, own, h, message_dtype)


def gather_messages(nbr: np.ndarray, weight: np.ndarray, sender: np.ndarray, msg: torch.Tensor):
    """The trainer's fixed-fanout tensors from padded neighbour lists and the messages at hand.

    ``nbr``/``weight`` (n, T): each node's list (-1 padding); ``sender`` (sorted,
    unique) and ``msg``: the messages this partition received, plus one row of
    zeros at the end that masked slots read. Returns ``(msgs
    (n, T, M), weight (n, T), mask (n, T))``; each message keeps its slot, so
    the tensors are exactly those the in-memory gather builds. A slot whose
    message did not come (padding, or a neighbour that is not an item) is masked.
    """
    pos = np.searchsorted(sender, nbr)
    found = (nbr >= 0) & (pos < len(sender))
    found[found] = sender[pos[found]] == nbr[found]
    rows = torch.from_numpy(np.where(found, pos, len(sender)).reshape(-1))
    msgs = msg.index_select(0, rows).reshape(*nbr.shape, msg.shape[1])
    return (msgs, torch.from_numpy(np.where(found, weight, 0).astype(np.float32)),
            torch.from_numpy(found))


def reduce_layer(model: PinSage, k: int, batches: Iterator[pa.RecordBatch], *,
                 num_neighbors: int, message_dtype: torch.dtype) -> Iterator[pa.RecordBatch]:
    """Conv ``k`` for the nodes of one partition.

    Input: ``STEP_ARROW`` rows sorted by ``(kind, node)``: first the messages
    this partition needs, each once, then the nodes' own rows. Output: the
    next step's rows, or the embeddings after the last conv.
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
            msg = torch.cat([*received, torch.zeros((1, conv.message_dim))])
            senders = received = None
        own = rb.slice(n_msg)
        nbr = raw(own.column("nbrs"), num_neighbors, torch.int64).numpy()
        weight = raw(own.column("wts"), num_neighbors, torch.float32).numpy()
        msgs, weight, mask = gather_messages(nbr, weight, sender, msg)
        with torch.no_grad():
            h = fixed_shape(conv.combine, decode(own.column("payload"), conv.in_dim), msgs,
                            weight, mask)
            if last:
                yield embedding_batch(_numpy(own, "node", np.int64), own.column("id"), h)
            else:
                yield from step_batches(model, k + 1, own, h, message_dtype)
