"""The numeric work of bottom-up inference on Arrow batches (no Spark needed).

Each function takes and returns ``pyarrow.RecordBatch`` so that Spark's
``mapInArrow`` can call it; the maths is the trainer's own
(``PinSage.input_layer``, ``PinSageConv.message``, ``PinSageConv.combine`` and,
after the last layer, ``PinSage.output``: the dense head and the L2 norm).
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

from pipeline.io.arrays import pad_lists
from pipeline.io.embeddings import list_column
from pipeline.model import PinSage, build_model

MESSAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}

# Between layers, rows travel in *parcels*: one Arrow IPC stream of rows bound
# for one reduce partition, in one Spark row (``key``: a value Spark hashes to
# that partition). Spark then moves a few large cells per task instead of a
# row per node and message, which is most of what a shuffle costs it.
PARCEL_SCHEMA = "key long, kind int, payload binary"
PARCEL_ARROW = pa.schema([("key", pa.int64()), ("kind", pa.int32()), ("payload", pa.binary())])
# A node's own row: its representation ``h`` (float32), how many convolutions
# it is needed after (``depth``), its reduce partition (``part``), its
# neighbour list (``nbrs``: T int64 ids, -1 padding; ``wts``: T float32
# weights) and ``fanout``: the partitions (int32) holding a node that lists it.
OWN_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()), ("depth", pa.int32()),
                       ("part", pa.int32()), ("h", pa.binary()), ("nbrs", pa.binary()),
                       ("wts", pa.binary()), ("fanout", pa.binary())])
# A node's message for the next convolution (``infer.message_dtype``).
MESSAGE_ARROW = pa.schema([("node", pa.int64()), ("msg", pa.binary())])
EMBEDDING_ARROW = pa.schema([("node", pa.int64()), ("id", pa.string()),
                             ("embedding", pa.list_(pa.float32())),
                             ("query", pa.list_(pa.float32()))])
MESSAGE, OWN = 0, 1       # kinds of parcels
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


def _list_cells(lists: pa.Array, dtype) -> pa.BinaryArray:
    """A list column as binary cells of its values' ``dtype`` bytes (a null list: no bytes)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    size = np.dtype(dtype).itemsize
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths) * size]).astype(np.int32)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return pa.Array.from_buffers(pa.binary(), len(lists), [None, pa.py_buffer(offsets),
                                                            pa.py_buffer(values.tobytes())])


def _cell_values(cells: pa.Array, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(values of all cells, one after the other; number of values in each cell)."""
    n, size = len(cells), np.dtype(dtype).itemsize
    ends = np.frombuffer(cells.buffers()[1], np.int32, count=n + 1, offset=cells.offset * 4)
    lengths = np.diff(ends) // size
    total = int(lengths.sum())
    values = (np.frombuffer(cells.buffers()[2], dtype, count=total, offset=int(ends[0]))
              if total else np.zeros(0, dtype))
    return values, lengths


def _binary(buffers: list[pa.Buffer]) -> pa.BinaryArray:
    """One binary cell per buffer."""
    offsets = np.concatenate([[0], np.cumsum([b.size for b in buffers])]).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), len(buffers), [
        None, pa.py_buffer(offsets), pa.py_buffer(b"".join(memoryview(b) for b in buffers))])


def pack(kind: int, rows: pa.RecordBatch, part: np.ndarray, keys: np.ndarray
         ) -> Iterator[pa.RecordBatch]:
    """``rows`` as parcels (``PARCEL_ARROW``): one per partition in ``part`` (row-wise)."""
    if rows.num_rows == 0:
        return
    order = np.argsort(part, kind="stable")
    parts, starts = np.unique(part[order], return_index=True)
    rows = rows.take(pa.array(order))
    payloads = []
    for lo, hi in zip(starts, [*starts[1:], len(order)]):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_batch(rows.slice(lo, hi - lo))
        payloads.append(sink.getvalue())
    yield pa.RecordBatch.from_arrays(
        [pa.array(keys[parts], pa.int64()), pa.array(np.full(len(parts), kind, np.int32)),
         _binary(payloads)], schema=PARCEL_ARROW)


def unpack(batches: Iterator[pa.RecordBatch]) -> tuple[pa.Table | None, pa.Table | None]:
    """All parcels of a partition: (own rows sorted by node, messages sorted by node)."""
    tables: dict[int, list[pa.Table]] = {MESSAGE: [], OWN: []}
    for rb in batches:
        kinds, payload = rb.column("kind").to_numpy(), rb.column("payload")
        for i in range(rb.num_rows):
            tables[int(kinds[i])].append(pa.ipc.open_stream(payload[i].as_buffer()).read_all())
    out = []
    for kind in (OWN, MESSAGE):
        if not tables[kind]:
            out.append(None)
            continue
        t = pa.concat_tables(tables[kind]).combine_chunks()
        # Sorted, so a partition's output does not depend on the order parcels came in.
        out.append(t.take(pa.array(np.argsort(t.column("node").to_numpy(), kind="stable"))))
    return out[0], out[1]


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


def step(model: PinSage, j: int, own: pa.RecordBatch, h: torch.Tensor, *,
         message_dtype: torch.dtype, keys: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Parcels after ``j`` convolutions: every node's conv-``j`` message to each
    partition of its fanout, and the own rows of the nodes needed after ``j + 1``.

    ``own``: the nodes' ``OWN_ARROW`` rows (any ``h``); ``h``: their
    representations after ``j`` convolutions.
    """
    node = _numpy(own, "node", np.int64)
    part, lengths = _cell_values(own.column("fanout"), np.int32)
    sender = np.repeat(np.arange(own.num_rows), lengths)
    if len(sender):
        msg = fixed_shape(model.convs[j].message, h)[torch.from_numpy(sender)]
        yield from pack(MESSAGE, pa.RecordBatch.from_arrays(
            [pa.array(node[sender]), encode(msg, message_dtype)], schema=MESSAGE_ARROW),
            part, keys)
    needed = _numpy(own, "depth", np.int32) > j
    if not needed.all():
        own, h = own.filter(pa.array(needed)), h[torch.from_numpy(needed)]
    nxt = own.set_column(own.schema.get_field_index("h"), "h", encode(h))
    yield from pack(OWN, nxt, _numpy(nxt, "part", np.int32), keys)


def embedding_batch(model: PinSage, node: np.ndarray, ids: pa.Array, h: torch.Tensor
                    ) -> pa.RecordBatch:
    """Rows of ``schemas.EMBEDDINGS``: ``PinSage.output`` (head, L2 norm) of the last ``h``,
    and the vector each item searches with (``PinSage.query``)."""
    z = fixed_shape(model.output, h)
    q = model.query(z, torch.tensor(node)).contiguous().numpy().astype(np.float32, copy=False)
    z = z.contiguous().numpy().astype(np.float32, copy=False)
    return pa.RecordBatch.from_arrays([pa.array(node, pa.int64()), ids, list_column(z),
                                       list_column(q)], schema=EMBEDDING_ARROW)


def input_layer(model: PinSage, batches: Iterator[pa.RecordBatch], *, num_neighbors: int,
                message_dtype: torch.dtype, keys: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Items -> layer 0 as parcels, or the embeddings when K = 0.

    Input rows: ``node, id, features, depth`` and, when K > 0, ``part``, the
    neighbour list (``neighbors``, ``weights``; null when the item has none)
    and ``fanout`` (list of int32 partitions, null when no item lists it).
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
                yield embedding_batch(model, node, rb.column("id"), h)
                continue
            nbrs, wts = pad_lists(rb.column("neighbors"), rb.column("weights"), num_neighbors)
            own = pa.RecordBatch.from_arrays(
                [rb.column("node"), rb.column("id"), rb.column("depth").cast(pa.int32()),
                 rb.column("part").cast(pa.int32()), pa.nulls(rb.num_rows, pa.binary()),
                 encode(torch.from_numpy(nbrs), torch.int64), encode(torch.from_numpy(wts)),
                 _list_cells(rb.column("fanout"), np.int32)], schema=OWN_ARROW)
            yield from step(model, 0, own, h, message_dtype=message_dtype, keys=keys)


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
                 num_neighbors: int, message_dtype: torch.dtype, keys: np.ndarray,
                 batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Conv ``k`` for the nodes of one partition, from all its parcels.

    Output: the next layer's parcels, or the embeddings after the last conv,
    ``batch_rows`` nodes at a time.
    """
    conv = model.convs[k]
    own, received = unpack(batches)
    if own is None:
        return
    if received is None:
        sender, msg = np.zeros(0, np.int64), torch.zeros((1, conv.message_dim))
    else:
        sender = received.column("node").to_numpy()
        msg = torch.cat([decode(received.column("msg"), conv.message_dim, message_dtype),
                         torch.zeros((1, conv.message_dim))])
    for rb in own.to_batches(max_chunksize=batch_rows):
        nbr = raw(rb.column("nbrs"), num_neighbors, torch.int64).numpy()
        weight = raw(rb.column("wts"), num_neighbors, torch.float32).numpy()
        msgs, weight, mask = gather_messages(nbr, weight, sender, msg)
        with torch.no_grad():
            h = fixed_shape(conv.combine, decode(rb.column("h"), conv.in_dim), msgs, weight, mask)
            if k == model.num_layers - 1:
                yield embedding_batch(model, _numpy(rb, "node", np.int64), rb.column("id"), h)
            else:
                yield from step(model, k + 1, rb, h, message_dtype=message_dtype, keys=keys)
