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
from omegaconf.errors import ValidationError
from pyspark.testing import assertDataFrameEqual

from pipeline.errors import PipelineError
from pipeline.infer import check_compatible, incremental, kernels, run_infer
from pipeline.io import versioned
from pipeline.io.arrays import dense_neighbors
from pipeline.io.embeddings import read_embeddings
from pipeline.io.manifests import GraphManifest, ModelManifest, NeighborsManifest
from pipeline.model import AGGREGATORS, PinSage, build_model

FEATURE_DIM, HIDDEN, T = 5, 8, 4
# Widths from 16 up: MKL computes narrower outputs (8 here) with a row's bits
# depending on its position in the call, so bit-exact comparisons use this.
WIDE = 16
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


def publish_graph(run_dir: str, features: np.ndarray, neighbors: pa.Table,
                  id_map: str | None = None) -> None:
    """The ``graph`` and ``neighbors`` stages as ingest and sampling would publish them.

    ``id_map``: the graph version this one's numbering was carried over from.
    """
    n = len(features)
    users = list(range(n, n + USERS))
    nodes = pa.table({
        "node": pa.array(list(range(n)) + users, pa.int64()),
        "id": pa.array([f"item-{i}" for i in range(n)] + [f"user-{u}" for u in users]),
        "type": pa.array(["item"] * n + ["user"] * USERS),
        "features": pa.array([f.tolist() for f in features] + [[]] * USERS,
                             pa.list_(pa.float32()))})
    with versioned.publish(run_dir, "graph", f"g{n}-{id_map}",
                           inputs={"id_map": id_map} if id_map else {}) as out:
        Path(out.table_path("nodes")).mkdir()
        pq.write_table(nodes, Path(out.table_path("nodes")) / "part-0.parquet")
        out.manifest.update(GraphManifest(n_items=n, n_nodes=n + USERS, bipartite=True,
                                          feature_dim=FEATURE_DIM,
                                          counts={"nodes": {"user": USERS}}).entries())
    with versioned.publish(run_dir, "neighbors", f"n{n}-{id_map}",
                           inputs={"split": "none"}) as out:
        out.manifest.update(NeighborsManifest(num_neighbors=T).entries())
        Path(out.table_path("neighbors")).mkdir()
        pq.write_table(neighbors, Path(out.table_path("neighbors")) / "part-0.parquet")


def publish_inputs(cfg, model: PinSage, features: np.ndarray, neighbors: pa.Table) -> None:
    """The ``graph``, ``neighbors`` and ``model`` stages as their jobs would publish them
    (``model`` is one of ``cfg.model``)."""
    publish_graph(cfg.run_dir, features, neighbors)
    with versioned.publish(cfg.run_dir, "model", "m") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest.update(ModelManifest.for_config(cfg.model, FEATURE_DIM, TRAINED, T).entries())


def reference(model: PinSage, features: np.ndarray, neighbors: pa.Table) -> np.ndarray:
    nbr, w = dense_neighbors(neighbors, N_ITEMS, T)
    with torch.no_grad():
        return model.full_graph_embed(torch.arange(N_ITEMS), torch.from_numpy(features),
                                      torch.from_numpy(nbr), torch.from_numpy(w)).numpy()


def setup(make_cfg, agg: str, num_layers: int = 2, id_embedding: str = "on", *overrides: str,
          hidden: int = HIDDEN, head_layers: int = 0, item_bias: bool = False,
          query_offsets: bool = False):
    torch.manual_seed(1)
    model = PinSage(FEATURE_DIM, hidden, num_layers, agg, num_items=TRAINED,
                    id_embedding=id_embedding, id_buckets=11, head_layers=head_layers,
                    item_bias=item_bias, query_offsets=query_offsets).eval()
    with torch.no_grad():
        if item_bias:
            model.query_shift.normal_()
        if query_offsets:
            model.query_offset.weight.normal_()
    features, neighbors = synthetic()
    # Small Arrow batches, so that parcels come from several batches per task and
    # each reduce partition combines its nodes in several chunks.
    cfg = make_cfg(f"model.aggregator={agg}", f"model.num_layers={num_layers}",
                   f"model.hidden_dim={hidden}", f"model.id_embedding={id_embedding}",
                   f"model.head_layers={head_layers}", f"model.item_bias={item_bias}",
                   f"model.query_offsets={query_offsets}", "model.id_buckets=11",
                   "infer.batch_rows=13", "infer.partitions=3",
                   *overrides)
    publish_inputs(cfg, model, features, neighbors)
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
    assert c["partitions"] == 3
    manifest = versioned.read_manifest(cfg.run_dir, "embeddings", result.version)
    assert set(manifest["inputs"]) == {"model", "neighbors", "graph"}
    assert not [p for p in versioned.resolve(cfg.run_dir, "embeddings").iterdir()
                if p.name.startswith("_") and p.name != "_SUCCESS"]


# The dense head runs after the input layer when K = 0 and after the last reduce otherwise.
@pytest.mark.parametrize("num_layers,id_embedding,head_layers",
                         [(0, "on", 2), (1, "hashed", 0), (3, "off", 2)])
def test_depths_ids_and_head(spark, make_cfg, num_layers, id_embedding, head_layers):
    cfg, model, features, neighbors = setup(make_cfg, "gated", num_layers, id_embedding,
                                            head_layers=head_layers)
    emb = read_embeddings(cfg.run_dir, run_infer(spark, cfg).version)
    np.testing.assert_allclose(emb.matrix, reference(model, features, neighbors), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(emb.queries, emb.matrix)    # no offsets, no shift


def test_published_query_vectors(spark, make_cfg):
    """Candidates keep the model's embeddings; each item searches with z + o + u
    (model.query_offsets, model.item_bias), exactly as PinSage.query computes it from
    the published embedding; items added after training get no offset."""
    cfg, model, features, neighbors = setup(make_cfg, "importance", item_bias=True,
                                            query_offsets=True)
    emb = read_embeddings(cfg.run_dir, run_infer(spark, cfg).version)
    np.testing.assert_allclose(emb.matrix, reference(model, features, neighbors), rtol=0, atol=1e-5)
    with torch.no_grad():
        expect = model.query(torch.tensor(emb.matrix), torch.arange(N_ITEMS)).numpy()
    np.testing.assert_array_equal(emb.queries, expect)
    u = model.query_shift.detach().numpy()
    np.testing.assert_array_equal(emb.queries[TRAINED:], emb.matrix[TRAINED:] + u)
    assert not np.allclose(emb.queries[:TRAINED], emb.matrix[:TRAINED] + u)


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
    cfg.model.head_layers = 2
    with pytest.raises(PipelineError, match="model.head_layers=0 but the config says"):
        run_infer(spark, cfg)
    cfg.model.head_layers = 0
    with pytest.raises(ValidationError, match=r"expected one of \[float32, float16, bfloat16\]"):
        cfg.infer.message_dtype = "int8"            # the typed config refuses it


def test_model_published_before_head_layers_is_headless(make_cfg):
    """A spec without ``head_layers`` / ``item_bias`` is checked and built as 0 / False."""
    torch.manual_seed(0)
    model = PinSage(FEATURE_DIM, HIDDEN, 1, "mean", num_items=TRAINED).eval()
    old = {"feature_dim": FEATURE_DIM, "num_items": TRAINED, "num_neighbors": T, "num_layers": 1,
           "hidden_dim": HIDDEN, "aggregator": "mean", "id_embedding": "on", "id_buckets": 11}
    cfg = make_cfg("model.num_layers=1", f"model.hidden_dim={HIDDEN}", "model.aggregator=mean")
    with pytest.raises(PipelineError, match="model.item_bias=False but the config says"):
        check_compatible(old, cfg.model, FEATURE_DIM, T)
    cfg.model.item_bias = False
    with pytest.raises(PipelineError, match="model.query_offsets=False but the config says"):
        check_compatible(old, cfg.model, FEATURE_DIM, T)
    cfg.model.query_offsets = False
    check_compatible(old, cfg.model, FEATURE_DIM, T)
    cfg.model.head_layers = 2
    with pytest.raises(PipelineError, match="model.head_layers=0 but the config says"):
        check_compatible(old, cfg.model, FEATURE_DIM, T)
    built = kernels.ModelBlob.of(model, old).build()
    assert built.head_layers == 0 and len(built.head) == 0 and built.query_shift is None
    assert built.query_offset is None
    with_head = build_model(cfg.model, FEATURE_DIM, TRAINED)
    assert with_head.head_layers == 2
    with pytest.raises(RuntimeError, match="head"):       # a headless checkpoint lacks G1, G2
        with_head.load_state_dict(model.state_dict())


def test_fanout_and_partition_keys(spark):
    from pyspark.sql import functions as F

    from pipeline.infer import fanout, partition_keys
    P = 3
    _, neighbors = synthetic()
    nb = spark.createDataFrame(neighbors.to_pandas())
    # A message goes once to each partition of a node that lists its sender.
    needed = nb.select(F.explode("neighbors").alias("node"),
                       F.pmod(F.hash("node"), F.lit(P)).alias("part")).distinct()
    assertDataFrameEqual(fanout(nb, P).select("node", F.explode("fanout").alias("part")), needed)
    # And a parcel keyed keys[p] lands in partition p.
    keys = partition_keys(spark, P)
    landed = (spark.createDataFrame([(int(k), p) for p, k in enumerate(keys)], "key long, p int")
              .repartition(P, "key").select("p", F.spark_partition_id().alias("got")).collect())
    assert sorted((r["p"], r["got"]) for r in landed) == [(p, p) for p in range(P)]


def test_vector_cells_round_trip():
    x = torch.randn(5, 3)
    for name, dtype in kernels.MESSAGE_DTYPES.items():
        back = kernels.decode(kernels.encode(x, dtype).slice(1), 3, dtype)
        torch.testing.assert_close(back, x[1:].to(dtype).float(), rtol=0, atol=0)


def receptive_brute(nbrs: list[list[int]], sources: set[int], hops: int) -> set[int]:
    """Items with a node of ``sources`` within ``hops`` steps along their neighbour lists."""
    return {v for v in range(len(nbrs))
            if any(u in sources for u in _ball(nbrs, v, hops))}


def _ball(nbrs, v, hops):
    seen, frontier = {v}, {v}
    for _ in range(hops):
        frontier = {u for x in frontier for u in nbrs[x]} - seen
        seen |= frontier
    return seen


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_levels_against_brute_force(spark, num_layers):
    g = np.random.default_rng(num_layers)
    n = 60
    lists = [[int(x) for x in g.choice(n, size=int(g.integers(0, 4)), replace=False)]
             for _ in range(n)]
    neighbors = spark.createDataFrame([(v, ls) for v, ls in enumerate(lists) if ls],
                                      "node long, neighbors array<long>")
    changed = [5, 17, 40]
    rows = incremental.levels(neighbors, spark.createDataFrame([(c,) for c in changed], "node long"),
                              num_layers).collect()
    depth = {r["node"]: r["depth"] for r in rows}
    assert len(depth) == len(rows)
    affected = receptive_brute(lists, set(changed), num_layers)
    assert {v for v, d in depth.items() if d == num_layers} == affected
    assert 0 < len(affected) < n
    for k in range(num_layers + 1):      # needed after k convolutions: within K-k hops of one
        need = {v for a in affected for v in _ball(lists, a, num_layers - k)}
        assert {v for v, d in depth.items() if d >= k} == need


def test_a_node_gets_the_same_bits_in_any_batch():
    """What lets incremental inference equal a full run: no result depends on batch-mates."""
    g = torch.Generator().manual_seed(3)
    for agg in AGGREGATORS:
        torch.manual_seed(2)
        model = PinSage(FEATURE_DIM, WIDE, 1, agg, num_items=TRAINED, head_layers=2).eval()
        conv = model.convs[0]
        n = kernels.CHUNK_ROWS + 37
        node = torch.randint(0, N_ITEMS, (n,), generator=g)
        feats = torch.randn(n, FEATURE_DIM, generator=g)
        h = torch.randn(n, WIDE, generator=g)
        msgs = torch.randn(n, T, conv.message_dim, generator=g)
        w, mask = torch.rand(n, T, generator=g), torch.rand(n, T, generator=g) > 0.3
        perm = torch.randperm(n, generator=g)
        sub = perm[:50]                                   # the same rows, other batch-mates
        with torch.no_grad():
            for fn, xs in ((model.input_layer, (node, feats)), (conv.message, (h,)),
                           (conv.combine, (h, msgs, w, mask)), (model.output, (h,))):
                full = kernels.fixed_shape(fn, *xs)
                torch.testing.assert_close(kernels.fixed_shape(fn, *(x[perm] for x in xs)),
                                           full[perm], rtol=0, atol=0)
                torch.testing.assert_close(kernels.fixed_shape(fn, *(x[sub] for x in xs)),
                                           full[sub], rtol=0, atol=0)


def changed_graph(features: np.ndarray, neighbors: pa.Table):
    """New features for item 2, a new neighbour list for item 11, two new items."""
    g = np.random.default_rng(7)
    features = np.concatenate([features, g.normal(size=(2, FEATURE_DIM)).astype(np.float32)])
    features[2] += 1
    rows = neighbors.to_pylist()
    for r in rows:
        if r["node"] == 11:
            r["neighbors"], r["weights"] = [N_ITEMS, 2], [0.75, 0.25]
    rows.append({"node": N_ITEMS, "neighbors": [11], "weights": [1.0]})
    return features, pa.Table.from_pylist(rows, schema=neighbors.schema), rows


@pytest.mark.parametrize("agg,num_layers,head_layers", [("gated", 2, 2), ("max", 1, 0)])
def test_incremental_equals_a_full_run(spark, make_cfg, agg, num_layers, head_layers):
    cfg, model, features, neighbors = setup(make_cfg, agg, num_layers, hidden=WIDE,
                                            head_layers=head_layers)
    first = run_infer(spark, cfg)
    new_features, new_neighbors, rows = changed_graph(features, neighbors)
    publish_graph(cfg.run_dir, new_features, new_neighbors,
                  id_map=versioned.latest_version(cfg.run_dir, "graph"))
    inc = run_infer(spark, cfg, embeddings_from=first.version)
    cfg.force = True
    full = run_infer(spark, cfg)
    assert inc.version != full.version and full.counts["reused_items"] == 0

    a, b = read_embeddings(cfg.run_dir, inc.version), read_embeddings(cfg.run_dir, full.version)
    np.testing.assert_array_equal(a.node, np.arange(N_ITEMS + 2))
    assert a.id == b.id
    np.testing.assert_array_equal(a.matrix, b.matrix)       # bit for bit
    lists = [[] for _ in range(N_ITEMS + 2)]
    for r in rows:
        lists[r["node"]] = r["neighbors"]
    # Item 2's features, item 11's list and the new items changed (item 41 has no list).
    affected = receptive_brute(lists, {2, 11, N_ITEMS, N_ITEMS + 1}, num_layers)
    c = inc.counts
    assert (c["changed_items"], c["recomputed_items"]) == (4, len(affected))
    assert c["reused_items"] == N_ITEMS + 2 - len(affected) > 0
    assert c["reused_from"] == first.version
    old = read_embeddings(cfg.run_dir, first.version)
    same = [v for v in range(N_ITEMS) if v not in affected]
    np.testing.assert_array_equal(a.matrix[same], old.matrix[same])


def test_incremental_refuses_another_model(spark, make_cfg):
    cfg, model, features, neighbors = setup(make_cfg, "mean", 1)
    first = run_infer(spark, cfg)
    with versioned.publish(cfg.run_dir, "model", "m2") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest.update(ModelManifest(ModelManifest.read(
            cfg.run_dir, first_model(cfg.run_dir)).spec).entries())
    again = run_infer(spark, cfg, embeddings_from=first.version)
    assert again.counts["reused_items"] == 0 and again.counts["recomputed_items"] == N_ITEMS
    assert again.counts["not_reused_because"] == f"it was made with model/{first_model(cfg.run_dir)}"


def first_model(run_dir: str) -> str:
    return versioned.list_versions(run_dir, "model")[0]


def test_damaged_inputs_are_named_before_anything_reads_them(spark, make_cfg):
    """A cut-short model.pt, neighbour table or embeddings file: one clear error, nothing published."""
    cfg, *_ = setup(make_cfg, "mean")
    model_pt = versioned.resolve(cfg.run_dir, "model") / "model.pt"
    good = model_pt.read_bytes()
    model_pt.write_bytes(good[:100])
    with pytest.raises(versioned.CorruptFile, match=rf"^{model_pt} cannot be read as the model "
                                                    r"its manifest describes .* retrain it"):
        run_infer(spark, cfg)
    model_pt.write_bytes(good)
    result = run_infer(spark, cfg)
    part = next((versioned.resolve(cfg.run_dir, "neighbors") / "neighbors").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-8])
    cfg.force = True
    with pytest.raises(versioned.CorruptFile, match=r"^neighbors/.*: .* no Parquet footer"):
        run_infer(spark, cfg)
    assert versioned.list_versions(cfg.run_dir, "embeddings") == [result.version]
    emb = next((versioned.resolve(cfg.run_dir, "embeddings") / "embeddings").glob("*.parquet"))
    emb.write_bytes(emb.read_bytes()[:-8])
    with pytest.raises(versioned.CorruptFile, match=rf"^embeddings/{result.version}: "):
        read_embeddings(cfg.run_dir)
