"""Spark bottom-up inference against the in-memory ``full_graph_embed``, node by node.

A small synthetic graph and a randomly initialised model are published in the
formats of ingest, sampling and the trainer, so every case runs in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.infer import kernels, run_infer
from pipeline.io import versioned
from pipeline.io.arrays import dense_neighbors
from pipeline.io.embeddings import read_embeddings
from pipeline.model import AGGREGATORS, PinSage

FEATURE_DIM, HIDDEN, T = 5, 8, 4
TRAINED, ADDED, USERS = 40, 3, 6   # items the model was trained on, items added later, users
N_ITEMS = TRAINED + ADDED


def synthetic(seed: int = 0):
    """Features, and ragged neighbour lists with padding, empty lists and one item absent."""
    g = np.random.default_rng(seed)
    features = g.normal(size=(N_ITEMS, FEATURE_DIM)).astype(np.float32)
    rows = []
    for node in range(N_ITEMS):
        if node == 7:
            continue                                  # no row at all: empty neighbourhood
        k = 0 if node in (3, TRAINED + 1) else int(g.integers(1, T + 1))
        nbrs = g.choice(N_ITEMS, size=k, replace=False).astype(np.int64)
        w = g.random(k).astype(np.float32) + 0.05
        order = np.argsort(-w, kind="stable")
        rows.append((node, nbrs[order], w[order] / w.sum()))
    neighbors = pa.table({
        "node": pa.array([r[0] for r in rows], pa.int64()),
        "neighbors": pa.array([r[1].tolist() for r in rows], pa.list_(pa.int64())),
        "weights": pa.array([r[2].tolist() for r in rows], pa.list_(pa.float32()))})
    return features, neighbors


def publish_inputs(run_dir: str, model: PinSage, features: np.ndarray, neighbors: pa.Table,
                   id_embedding: str = "on") -> None:
    """The ``graph``, ``neighbors`` and ``model`` stages as their jobs would publish them."""
    users = list(range(N_ITEMS, N_ITEMS + USERS))
    nodes = pa.table({
        "node": pa.array(list(range(N_ITEMS)) + users, pa.int64()),
        "id": pa.array([f"item-{i}" for i in range(N_ITEMS)] + [f"user-{u}" for u in users]),
        "type": pa.array(["item"] * N_ITEMS + ["user"] * USERS),
        "features": pa.array([f.tolist() for f in features] + [[]] * USERS,
                             pa.list_(pa.float32()))})
    with versioned.publish(run_dir, "graph", "g") as out:
        Path(out.table_path("nodes")).mkdir()
        pq.write_table(nodes, Path(out.table_path("nodes")) / "part-0.parquet")
        out.manifest["counts"] = {"feature_dim": FEATURE_DIM,
                                  "nodes": {"item": N_ITEMS, "user": USERS}}
    with versioned.publish(run_dir, "neighbors", "n", config={"num_neighbors": T}) as out:
        Path(out.table_path("neighbors")).mkdir()
        pq.write_table(neighbors, Path(out.table_path("neighbors")) / "part-0.parquet")
    with versioned.publish(run_dir, "model", "m") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest["model"] = {"feature_dim": FEATURE_DIM, "num_items": TRAINED,
                                 "num_neighbors": T, "num_layers": model.num_layers,
                                 "hidden_dim": HIDDEN, "aggregator": model.aggregator,
                                 "id_embedding": id_embedding, "id_buckets": 11}


def reference(model: PinSage, features: np.ndarray, neighbors: pa.Table) -> np.ndarray:
    nbr, w = dense_neighbors(neighbors, N_ITEMS, T)
    with torch.no_grad():
        return model.full_graph_embed(torch.arange(N_ITEMS), torch.from_numpy(features),
                                      torch.from_numpy(nbr), torch.from_numpy(w)).numpy()


def setup(make_cfg, agg: str, num_layers: int = 2, id_embedding: str = "on", *overrides: str):
    torch.manual_seed(1)
    model = PinSage(FEATURE_DIM, HIDDEN, num_layers, agg, num_items=TRAINED,
                    id_embedding=id_embedding, id_buckets=11).eval()
    features, neighbors = synthetic()
    # Small Arrow batches, so that nodes straddle batch boundaries in the reduce.
    cfg = make_cfg(f"model.aggregator={agg}", f"model.num_layers={num_layers}",
                   f"model.hidden_dim={HIDDEN}", f"model.id_embedding={id_embedding}",
                   "infer.batch_rows=13", "infer.partitions=3", *overrides)
    publish_inputs(cfg.run_dir, model, features, neighbors, id_embedding)
    return cfg, model, features, neighbors


@pytest.mark.parametrize("agg", AGGREGATORS)
def test_spark_equals_full_graph_embed(spark, make_cfg, agg):
    cfg, model, features, neighbors = setup(make_cfg, agg)
    result = run_infer(spark, cfg)
    emb = read_embeddings(cfg.run_dir, result.version)
    np.testing.assert_array_equal(emb.node, np.arange(N_ITEMS))     # items only, every one
    assert emb.id == [f"item-{i}" for i in range(N_ITEMS)]
    np.testing.assert_allclose(emb.matrix, reference(model, features, neighbors), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.matrix, axis=1), 1.0, atol=1e-6)
    c = result.counts
    assert (c["items"], c["unseen_items"], c["empty_neighborhoods"]) == (N_ITEMS, ADDED, 3)
    assert len(c["seconds_per_layer"]) == 3
    manifest = versioned.read_manifest(cfg.run_dir, "embeddings", result.version)
    assert set(manifest["inputs"]) == {"model", "neighbors", "graph"}
    assert not (versioned.resolve(cfg.run_dir, "embeddings") / "_layers").exists()


@pytest.mark.parametrize("num_layers,id_embedding", [(0, "on"), (1, "hashed"), (3, "off")])
def test_depths_and_id_modes(spark, make_cfg, num_layers, id_embedding):
    cfg, model, features, neighbors = setup(make_cfg, "gated", num_layers, id_embedding)
    emb = read_embeddings(cfg.run_dir, run_infer(spark, cfg).version)
    np.testing.assert_allclose(emb.matrix, reference(model, features, neighbors), rtol=0, atol=1e-5)


def test_item_added_after_training_uses_features_only():
    """An id the model has no row for contributes nothing; known ids are unchanged."""
    torch.manual_seed(0)
    model = PinSage(FEATURE_DIM, HIDDEN, 1, "mean", num_items=TRAINED).eval()
    feats = torch.randn(3, FEATURE_DIM)
    with torch.no_grad():
        h = model.input_layer(torch.tensor([0, TRAINED, TRAINED + 100]), feats)
        projected = model.feature_proj(feats)
        torch.testing.assert_close(h[1:], projected[1:], rtol=0, atol=0)
        torch.testing.assert_close(h[0], projected[0] + model.id_emb.weight[0], rtol=0, atol=0)


def test_reused_then_forced_and_compact_messages(spark, make_cfg):
    cfg, model, features, neighbors = setup(make_cfg, "gatv2")
    first = run_infer(spark, cfg)
    again = run_infer(spark, cfg)
    assert again.reused and again.version == first.version and again.counts == first.counts
    cfg.force = True
    assert not run_infer(spark, cfg).reused
    cfg.force = False
    cfg.infer.message_dtype = "bfloat16"
    approx = run_infer(spark, cfg)
    assert not approx.reused
    emb = read_embeddings(cfg.run_dir, approx.version).matrix
    exact = reference(model, features, neighbors)
    err = np.abs(emb - exact).max()
    assert 0 < err < 0.05


def test_clear_errors(spark, make_cfg):
    cfg = make_cfg()
    with pytest.raises(PipelineError, match="needs the 'model' stage"):
        run_infer(spark, cfg)
    cfg, *_ = setup(make_cfg, "max")
    cfg.model.num_layers = 3
    with pytest.raises(PipelineError, match="model.num_layers=2 but the config says"):
        run_infer(spark, cfg)
    cfg.model.num_layers = 2
    cfg.infer.message_dtype = "int8"
    with pytest.raises(PipelineError, match="infer.message_dtype"):
        run_infer(spark, cfg)


def test_vector_cells_round_trip():
    x = torch.randn(5, 3)
    for name, dtype in kernels.MESSAGE_DTYPES.items():
        back = kernels.decode(kernels.encode(x, dtype).slice(1), 3, dtype)
        torch.testing.assert_close(back, x[1:].to(dtype).float(), rtol=0, atol=0)
