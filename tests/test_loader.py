"""Feature store and minibatch loader on tiny synthetic Parquet written here (no Spark)."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import types as T

from pipeline.data.features import FeatureStore, build_feature_store
from pipeline.io import schemas
from pipeline.model import PinSage
from pipeline.train import loader as loader_mod
from pipeline.train.loader import (BatchLoader, Draw, LoaderError, Minibatch, assemble,
                                   list_batch_files, read_batches)

N_ITEMS, N_USERS, DIM, T_NBR, K = 40, 6, 4, 3, 2
ROWS_PER_FILE = (5, 4, 6)


def _arrow_type(dt):
    """The Arrow type Spark writes for a schemas.py type, so files match the contract."""
    if isinstance(dt, T.ArrayType):
        return pa.list_(_arrow_type(dt.elementType))
    return {T.LongType: pa.int64(), T.IntegerType: pa.int32(), T.FloatType: pa.float32(),
            T.StringType: pa.string()}[type(dt)]


def _arrow_schema(struct):
    return pa.schema([pa.field(f.name, _arrow_type(f.dataType), f.nullable) for f in struct])


def _features():
    return np.random.default_rng(7).normal(size=(N_ITEMS, DIM)).astype(np.float32)


def _make_row(batch_id: int, rng: np.random.Generator) -> dict:
    """A consistent minibatch: layer k+1 = layer k + new neighbours, padded indices."""
    n0 = int(rng.integers(3, 6))
    layers = [rng.choice(N_ITEMS, size=n0, replace=False).astype(np.int64)]
    nbr_idx, nbr_weight = [], []
    for _ in range(K):
        cur = layers[-1]
        ids = rng.choice(N_ITEMS, size=(len(cur), T_NBR))
        ids[rng.random(ids.shape) < 0.3] = -1
        new = np.setdiff1d(ids[ids >= 0], cur)
        nxt = np.concatenate([cur, new])
        pos = {int(n): i for i, n in enumerate(nxt)}
        idx = np.array([[pos[int(v)] if v >= 0 else -1 for v in r] for r in ids], dtype=np.int32)
        w = np.where(idx >= 0, rng.random(idx.shape), 0).astype(np.float32)
        layers.append(nxt)
        nbr_idx.append(idx.ravel().tolist())
        nbr_weight.append(w.ravel().tolist())
    nq = int(rng.integers(1, n0))
    hard = [rng.integers(0, n0, size=int(rng.integers(0, 4))).tolist() for _ in range(nq)]
    hard[0] = []
    return {"batch": batch_id,
            "query": rng.integers(0, n0, size=nq).tolist(),
            "positive": rng.integers(0, n0, size=nq).tolist(),
            "hard": hard,
            "easy": rng.choice(n0, size=3, replace=False).tolist(),
            "nodes": [layer.tolist() for layer in layers],
            "nbr_idx": nbr_idx,
            "nbr_weight": nbr_weight}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Nodes table, feature store and a batches version dir with 3 train files."""
    root = tmp_path_factory.mktemp("loader")
    feats = _features()
    order = np.random.default_rng(1).permutation(N_ITEMS + N_USERS)
    rows = [{"node": int(n), "id": f"n{n}", "type": schemas.ITEM if n < N_ITEMS else schemas.USER,
             "features": feats[n].tolist() if n < N_ITEMS else []} for n in order]
    nodes_dir = root / "nodes"
    nodes_dir.mkdir()
    node_schema = _arrow_schema(schemas.NODES)
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half], node_schema), nodes_dir / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:], node_schema), nodes_dir / "part-00001.parquet")
    (nodes_dir / "_SUCCESS").write_text("")

    rng = np.random.default_rng(3)
    batch_schema = _arrow_schema(schemas.BATCHES)
    by_id, bid = {}, 0
    for split in ("train", "validation"):
        (root / "batches" / split).mkdir(parents=True)
    for f, n in enumerate(ROWS_PER_FILE):
        file_rows = []
        for _ in range(n):
            by_id[bid] = _make_row(bid, rng)
            file_rows.append(by_id[bid])
            bid += 1
        pq.write_table(pa.Table.from_pylist(file_rows, batch_schema),
                       root / "batches" / "train" / f"part-{f:05d}.parquet", row_group_size=2)
    (root / "batches" / "train" / "_SUCCESS").write_text("")
    store = build_feature_store(nodes_dir, root / "features.npy")
    return {"root": root, "nodes_dir": nodes_dir, "feats": feats, "store": store,
            "batches": root / "batches", "rows": by_id}


def _producers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("batch-producer") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    assert _producers_alive() == []


def _same(a: Minibatch, b: Minibatch) -> bool:
    tensors = lambda m: [*m.nodes, m.features, *m.nbr_idx, *m.nbr_weight,  # noqa: E731
                         m.query, m.positive, m.easy, m.hard]
    return a.batch_id == b.batch_id and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        for x, y in zip(tensors(a), tensors(b), strict=True))


def _files(data):
    return list_batch_files(data["batches"], "train")


# Feature store ---------------------------------------------------------------

def test_feature_store_round_trip(data):
    store = data["store"]
    assert (store.num_items, store.dim) == (N_ITEMS, DIM)
    ids = np.array([5, 0, 39, 5, 17])
    got = store.gather(ids)
    assert got.dtype == np.float32 and got.shape == (5, DIM)
    np.testing.assert_array_equal(got, data["feats"][ids])
    reopened = FeatureStore.open(data["root"] / "features.npy")
    np.testing.assert_array_equal(reopened.gather(np.arange(N_ITEMS)), data["feats"])
    with pytest.raises(IndexError):
        store.gather(np.array([N_ITEMS]))  # the first user: users have no row
    with pytest.raises(IndexError):
        store.gather(np.array([-1]))
    assert sorted(p.name for p in data["root"].iterdir() if p.name.endswith(".tmp")) == []


def test_feature_store_dim_zero(tmp_path):
    schema = _arrow_schema(schemas.NODES)
    rows = [{"node": n, "id": str(n), "type": schemas.ITEM if n < 3 else schemas.USER,
             "features": []} for n in (3, 1, 0, 2)]
    pq.write_table(pa.Table.from_pylist(rows, schema), tmp_path / "part-0.parquet")
    store = build_feature_store(tmp_path, tmp_path / "out" / "f.npy")
    assert (store.num_items, store.dim) == (3, 0)
    assert store.gather(np.array([2, 0])).shape == (2, 0)


def test_feature_store_rejects_ragged_features_and_leaves_nothing(tmp_path):
    schema = _arrow_schema(schemas.NODES)
    rows = [{"node": 0, "id": "a", "type": "item", "features": [1.0, 2.0]},
            {"node": 1, "id": "b", "type": "item", "features": [1.0]}]
    src = tmp_path / "nodes"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema), src / "part-0.parquet")
    with pytest.raises(ValueError, match="item 1 has 1 features"):
        build_feature_store(src, tmp_path / "f.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodes"]


# Reading and assembling ----------------------------------------------------------

def test_read_batches_reads_every_row_group_in_order(data):
    files = _files(data)
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [3, 2, 3]
    rows = list(read_batches(files))
    assert [r["batch"] for r in rows] == list(range(sum(ROWS_PER_FILE)))
    for r in rows:
        src = data["rows"][r["batch"]]
        assert r["query"].dtype == np.int32 and r["query"].tolist() == src["query"]
        assert [h.tolist() for h in r["hard"]] == src["hard"]
        assert [n.tolist() for n in r["nodes"]] == src["nodes"]
        assert r["nodes"][0].dtype == np.int64 and r["nbr_weight"][0].dtype == np.float32


def test_assemble_reconstructs_shapes_and_values(data):
    for row in read_batches(_files(data)):
        src = data["rows"][row["batch"]]
        mb = assemble(row, data["store"], T_NBR)
        assert mb.batch_id == src["batch"] and mb.num_layers == K
        assert [n.tolist() for n in mb.nodes] == src["nodes"]
        assert all(n.dtype == torch.int64 for n in mb.nodes)
        for k in range(K):
            n_k = len(src["nodes"][k])
            assert mb.nbr_idx[k].shape == (n_k, T_NBR) and mb.nbr_idx[k].dtype == torch.int64
            assert mb.nbr_idx[k].tolist() == np.reshape(src["nbr_idx"][k], (n_k, T_NBR)).tolist()
            np.testing.assert_array_equal(
                mb.nbr_weight[k].numpy(),
                np.reshape(np.float32(src["nbr_weight"][k]), (n_k, T_NBR)))
            assert (mb.nbr_weight[k][mb.nbr_idx[k] < 0] == 0).all()
        width = max(len(h) for h in src["hard"])
        assert mb.hard.shape == (len(src["query"]), width) and mb.hard.dtype == torch.int64
        for q, h in enumerate(src["hard"]):
            assert mb.hard[q].tolist() == h + [-1] * (width - len(h))
        assert mb.query.tolist() == src["query"] and mb.positive.tolist() == src["positive"]
        assert mb.easy.tolist() == src["easy"] and mb.easy.dtype == torch.int64
        deepest = np.array(src["nodes"][K])
        assert mb.features.dtype == torch.float32
        np.testing.assert_array_equal(mb.features.numpy(), data["feats"][deepest])
        moved = mb.to("cpu")
        assert _same(moved, mb)


def test_assemble_rejects_wrong_num_neighbors(data):
    row = next(read_batches(_files(data)))
    with pytest.raises(ValueError, match="num_neighbors"):
        assemble(row, data["store"], T_NBR + 1)


# Negatives drawn per epoch ------------------------------------------------------------

def _ids(mb: Minibatch, local: torch.Tensor) -> list[int]:
    return mb.nodes[0][local].tolist()


def test_each_epoch_draws_its_own_subset_of_the_stored_negatives(data):
    store, seen = data["store"], {}
    for row in read_batches(_files(data)):
        full = assemble(row, store, T_NBR)
        pool = sorted(_ids(full, full.easy))
        for epoch in range(12):
            draw = Draw(easy=2, hard=1, seed=0, epoch=epoch)
            mb = assemble(row, store, T_NBR, draw)
            assert _same(mb, assemble(row, store, T_NBR, draw))  # (seed, epoch, batch) alone
            easy = _ids(mb, mb.easy)
            assert len(easy) == 2 and all(pool.count(x) >= easy.count(x) for x in easy)
            width = min(1, max(len(c) for c in row["hard"]))
            assert mb.hard.shape == (len(mb.query), width)
            for q, cands in enumerate(row["hard"]):
                got = [h for h in mb.hard[q].tolist() if h >= 0]
                assert len(got) == min(width, len(cands))
                assert set(_ids(mb, torch.tensor(got, dtype=torch.int64))) <= set(
                    full.nodes[0].numpy()[cands].tolist())
            seen.setdefault(row["batch"], set()).add(tuple(sorted(easy)))
    # Three slots give three pairs; twelve epochs draw more than one of them.
    assert all(len(draws) > 1 for draws in seen.values())


def test_draw_keeps_exactly_the_graph_the_drawn_nodes_need(data):
    torch.manual_seed(0)
    model = PinSage(feature_dim=DIM, hidden_dim=8, num_layers=K, aggregator="importance",
                    num_items=N_ITEMS).eval()
    store = data["store"]
    for row in read_batches(_files(data)):
        full = assemble(row, store, T_NBR)
        cut = assemble(row, store, T_NBR, Draw(easy=1, hard=1, seed=3, epoch=1))
        used = cut.query.tolist() + cut.positive.tolist() + cut.easy.tolist() + [
            h for h in cut.hard.flatten().tolist() if h >= 0]
        assert sorted(set(used)) == list(range(len(cut.nodes[0])))  # nothing else at layer 0
        assert _ids(cut, cut.query) == _ids(full, full.query)
        assert _ids(cut, cut.positive) == _ids(full, full.positive)
        for k in range(K):
            assert torch.equal(cut.nodes[k + 1][:len(cut.nodes[k])], cut.nodes[k])
            assert len(set(cut.nodes[k + 1].tolist())) == len(cut.nodes[k + 1])
            idx = cut.nbr_idx[k]
            # Layer k+1 holds layer k and its neighbours, nothing more.
            assert set(cut.nodes[k + 1].tolist()) == set(cut.nodes[k].tolist()) | set(
                cut.nodes[k + 1][idx[idx >= 0]].tolist())
        np.testing.assert_array_equal(cut.features.numpy(), data["feats"][cut.nodes[K].numpy()])
        with torch.no_grad():
            z_full = model(full.nodes, full.features, full.nbr_idx, full.nbr_weight)
            z_cut = model(cut.nodes, cut.features, cut.nbr_idx, cut.nbr_weight)
        where = {n: i for i, n in enumerate(full.nodes[0].tolist())}
        rows = torch.tensor([where[n] for n in cut.nodes[0].tolist()])
        torch.testing.assert_close(z_cut, z_full[rows], rtol=0, atol=1e-6)


# Loader order and sharding ---------------------------------------------------------

def test_sync_and_threaded_yield_identical_sequences(data):
    files = _files(data)
    neg = dict(easy_negatives=2, hard_negatives=1)  # the same draws, whoever assembles
    sync = list(BatchLoader(files, data["store"], T_NBR, prefetch=0, seed=5, epoch=2, **neg))
    ids = [mb.batch_id for mb in sync]
    assert sorted(ids) == list(range(sum(ROWS_PER_FILE)))
    expected = [r["batch"] for r in read_batches(
        BatchLoader(files, data["store"], T_NBR, seed=5, epoch=2).file_order())]
    assert ids == expected
    for prefetch, workers in ((2, 2), (1, 3), (4, 5)):
        with BatchLoader(files, data["store"], T_NBR, prefetch=prefetch, num_workers=workers,
                         seed=5, epoch=2, **neg) as loader:
            threaded = list(loader)
            assert loader.wait_seconds >= 0
        assert [mb.batch_id for mb in threaded] == ids
        assert all(_same(a, b) for a, b in zip(sync, threaded, strict=True))


def test_epoch_reshuffles_files_deterministically(data):
    files = _files(data)

    def ids(**kw):
        return [mb.batch_id for mb in BatchLoader(files, data["store"], T_NBR, prefetch=2,
                                                  num_workers=2, seed=0, **kw)]
    assert ids(epoch=0) == ids(epoch=0)
    assert ids(shuffle=False) == list(range(sum(ROWS_PER_FILE)))
    # 3 files have 6 orders, so two epochs may agree by chance; many must not.
    orders = [tuple(BatchLoader(files, data["store"], T_NBR, seed=0, epoch=e).file_order())
              for e in range(10)]
    assert len(set(orders)) >= 3 and all(sorted(o) == files for o in orders)
    other = next(e for e in range(1, 10) if orders[e] != orders[0])
    assert ids(epoch=other) != ids(epoch=0)
    assert sorted(ids(epoch=other)) == sorted(ids(epoch=0))
    loader = BatchLoader(files, data["store"], T_NBR, seed=0)
    assert len(loader) == sum(ROWS_PER_FILE)
    loader.set_epoch(other)
    assert tuple(loader.file_order()) == orders[other]


def test_ranks_get_disjoint_files_covering_the_split(data):
    every = list_batch_files(data["batches"], "train")
    assert len(every) == len(ROWS_PER_FILE) and every == sorted(every)
    for world in (1, 2, 3, 4):
        shards = [list_batch_files(data["batches"], "train", r, world) for r in range(world)]
        flat = [f for s in shards for f in s]
        assert len(flat) == len(set(flat)) and sorted(flat) == every
    assert list_batch_files(data["batches"], "validation") == []
    with pytest.raises(ValueError):
        list_batch_files(data["batches"], "train", rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        list_batch_files(data["batches"], "test")


# Failures and shutdown -----------------------------------------------------------------

def test_corrupt_file_surfaces_as_loader_error(data, tmp_path):
    files = _files(data)
    bad = tmp_path / "part-99999.parquet"
    bad.write_bytes(b"this is not parquet" * 10)
    loader = BatchLoader(files + [str(bad)], data["store"], T_NBR, prefetch=1, num_workers=2,
                         seed=0)
    order = loader.file_order()
    before = sum(pq.ParquetFile(f).metadata.num_rows for f in order[:order.index(str(bad))])
    got = []
    with pytest.raises(LoaderError) as info:
        for mb in loader:
            got.append(mb.batch_id)
    assert len(got) == before  # everything ahead of the bad file, in order, then the error
    msg = str(info.value)
    assert str(bad) in msg and "Traceback (most recent call last)" in msg
    assert isinstance(info.value.__cause__, pa.ArrowInvalid)
    assert str(info.value.__cause__) in msg
    assert loader.threads and not any(t.is_alive() for t in loader.threads)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_producer_exception_carries_its_traceback(data, monkeypatch, prefetch):
    real = loader_mod.assemble

    def exploding_assemble(row, *args):
        if row["batch"] == 7:
            raise RuntimeError("boom in batch 7")
        return real(row, *args)

    monkeypatch.setattr(loader_mod, "assemble", exploding_assemble)
    loader = BatchLoader(_files(data), data["store"], T_NBR, prefetch=prefetch, num_workers=3)
    with pytest.raises(LoaderError) as info:
        for _ in loader:
            pass
    msg = str(info.value)
    assert "boom in batch 7" in msg and "in exploding_assemble" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not any(t.is_alive() for t in loader.threads)


def _blocked_loader(data) -> tuple[BatchLoader, object]:
    loader = BatchLoader(_files(data), data["store"], T_NBR, prefetch=1, num_workers=2)
    it = iter(loader)
    next(it)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_producers_alive()) < 2:
        time.sleep(0.01)
    time.sleep(0.2)  # let both fill their one-slot queue and block in put
    assert len(loader.threads) == 2 and all(t.is_alive() for t in loader.threads)
    return loader, it


def test_break_then_close_stops_blocked_producers(data):
    loader, it = _blocked_loader(data)
    for _ in it:
        break
    loader.close()
    assert not any(t.is_alive() for t in loader.threads)
    loader.close()  # idempotent


def test_dropping_the_iterator_stops_producers(data):
    loader, it = _blocked_loader(data)
    threads = list(loader.threads)
    del it
    gc.collect()
    assert not any(t.is_alive() for t in threads)


def test_keyboard_interrupt_in_consumer_stops_producers(data):
    with pytest.raises(KeyboardInterrupt):
        with BatchLoader(_files(data), data["store"], T_NBR, prefetch=1, num_workers=2) as loader:
            for _ in loader:
                raise KeyboardInterrupt
    assert loader.threads and not any(t.is_alive() for t in loader.threads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pinned_batches_are_pinned(data):
    with BatchLoader(_files(data), data["store"], T_NBR, prefetch=2, pin_memory=True) as loader:
        mb = next(iter(loader))
        assert mb.features.is_pinned() and all(t.is_pinned() for t in mb.nbr_idx)
        assert mb.to("cuda").features.is_cuda
