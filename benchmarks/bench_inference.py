"""Whole-graph inference: the bottom-up Spark job against in-memory and naive per-node references.

On a synthetic graph (power-law neighbour popularity, every item with a full
list of T neighbours, features only: ``model.id_embedding=off``) and a
randomly initialised model it times

  (a) the Spark job ``run_infer`` on local[2], from reading the published
      stages to the published ``embeddings`` stage (SparkSession start-up
      excluded): one map/route/reduce pass and one shuffle per layer;
  (b) the in-memory floor, in one process with as many torch threads as
      Spark has cores, on the same neighbour table already in memory:
      (b0) ``PinSage.full_graph_embed``, which gathers the N x T x d
      messages (the old reference), and (b1) :func:`sparse_embed`, the same
      maths with the aggregation as one sparse (CSR) product of the N x N
      importance weights with the messages: nothing N x T x d exists. (b1)
      is checked equal to (b0) to float tolerance, and is the reference;
  (c) the naive Spark alternative: every target's own K-hop tree
      materialised by joining the neighbour lists K times (plus the features
      of all T + T^2 tree nodes), then the trainer's minibatch
      ``PinSage.forward`` over batches of those trees. It runs on two seeded
      subsamples of targets, n1 < n2; the whole graph is extrapolated from
      the marginal cost per target, fixed costs (the full-table scans and
      joins every run does) counted once:
      t(N) = t(n1) + (N - n1) (t(n2) - t(n1)) / (n2 - n1).

Both Spark results are checked against (b0). The last lines are ``key=value``:
nodes/s per core of (b0), (b1) and (a), ``inference_overhead_full_graph_embed
=<(a)/(b0)>``, ``inference_overhead=<(a)/(b1)>`` (goal <= 5) and
``bottom_up_speedup=<(c)/(a)>`` (goal >= 5), times for the whole graph.

    .venv/bin/python benchmarks/bench_inference.py                  # 1M items, T=10, K=2, d=64
    .venv/bin/python benchmarks/bench_inference.py --items 100000   # quick look
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra import compose, initialize_config_dir  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from pipeline.config import CONF_DIR  # noqa: E402
from pipeline.infer import run_infer  # noqa: E402
from pipeline.io import versioned  # noqa: E402
from pipeline.io.embeddings import read_embeddings  # noqa: E402
from pipeline.model import PinSage  # noqa: E402
from pipeline.model.layers import NORM_EPS  # noqa: E402
from pipeline.spark import build_spark  # noqa: E402

ROWS_PER_FILE = 250_000
SPARK_CORES = 2  # local[2]; the in-memory references get as many torch threads


def synthetic(n_items: int, T: int, feature_dim: int, seed: int):
    """Features and T neighbours per item, drawn by Zipf-like popularity; weights sum to 1."""
    g = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    nbr = g.choice(n_items, size=(n_items, T), p=pop / pop.sum()).astype(np.int64)
    w = g.random((n_items, T), dtype=np.float32) + 0.05
    w /= w.sum(1, keepdims=True)
    features = g.normal(size=(n_items, feature_dim)).astype(np.float32)
    return features, nbr, w


def _lists(matrix: np.ndarray, dtype) -> pa.ListArray:
    n, d = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)),
                                    pa.array(matrix.reshape(-1), dtype))


def _write(table: pa.Table, path: str) -> None:
    Path(path).mkdir()
    for i, lo in enumerate(range(0, table.num_rows, ROWS_PER_FILE)):
        pq.write_table(table.slice(lo, ROWS_PER_FILE), f"{path}/part-{i:05d}.parquet")


def sparse_embed(model: PinSage, features: torch.Tensor, nbr: np.ndarray, w: np.ndarray
                 ) -> torch.Tensor:
    """``model.full_graph_embed`` without gathering messages: per layer one CSR product.

    For ``importance`` (``mean``: weights 1 on real slots) a conv's neighbour
    term is ``n_i = sum_j w_ij m_j / sum_j w_ij``, a sparse matrix A (row i:
    the normalised weights of i's list, duplicates summed) times the messages
    M = ReLU(Q H + q): ``n = A M``, with no N x T x d tensor. Then the conv's
    own dense part, ``ReLU(W [h, n] + w)`` split as ``W_h h + W_n n`` (no
    concatenation), the L2 norm, and after the last conv ``model.output``.
    Same maths as ``PinSageConv.combine``; only the summation order differs.
    """
    if model.aggregator not in ("importance", "mean"):
        raise ValueError(f"sparse_embed does importance/mean pooling, not {model.aggregator}")
    n = nbr.shape[0]
    idx = torch.from_numpy(nbr)
    mask = idx >= 0
    wt = mask.float() if model.aggregator == "mean" else torch.from_numpy(w).masked_fill(~mask, 0)
    wt = wt / wt.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    crow = torch.zeros(n + 1, dtype=torch.int32)
    torch.cumsum(mask.sum(1), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        # int32 indices: the MKL kernel, about twice as fast as int64's.
        adj = torch.sparse_csr_tensor(crow, idx[mask].to(torch.int32), wt[mask], (n, n),
                                      check_invariants=False)
    h = model.input_layer(torch.arange(n), features)
    for conv in model.convs:
        agg = adj @ torch.relu(conv.msg(h))
        w_h, w_n = conv.out.weight[:, :conv.in_dim], conv.out.weight[:, conv.in_dim:]
        z = torch.addmm(conv.out.bias, h, w_h.t()).addmm_(agg, w_n.t()).relu_()
        h = torch.nn.functional.normalize(z, dim=-1, eps=NORM_EPS)
    return model.output(h)


def publish_inputs(run_dir: str, model: PinSage, features, nbr, w) -> None:
    """The ``graph``, ``neighbors`` and ``model`` stages in the formats their jobs publish."""
    n, T = nbr.shape
    node = pa.array(np.arange(n, dtype=np.int64))
    with versioned.publish(run_dir, "graph", "bench") as out:
        _write(pa.table({"node": node, "id": pa.array([f"i{i}" for i in range(n)]),
                         "type": pa.array(["item"] * n), "features": _lists(features, pa.float32())}),
               out.table_path("nodes"))
        out.manifest["counts"] = {"feature_dim": features.shape[1], "nodes": {"item": n},
                                  "nodes_out": n, "edges_out": n * T}
        out.manifest["bipartite"] = False
    with versioned.publish(run_dir, "neighbors", "bench", config={"num_neighbors": T},
                           inputs={"split": "bench"}) as out:
        out.manifest["counts"] = {"hard_window_ranks": [0, 0]}
        _write(pa.table({"node": node, "neighbors": _lists(nbr, pa.int64()),
                         "weights": _lists(w, pa.float32())}), out.table_path("neighbors"))
    with versioned.publish(run_dir, "model", "bench") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest["model"] = {"feature_dim": features.shape[1], "num_items": n,
                                 "num_neighbors": T, "num_layers": model.num_layers,
                                 "hidden_dim": model.hidden_dim, "aggregator": model.aggregator,
                                 "id_embedding": "off", "id_buckets": 1, "head_layers": 0,
                                 "item_bias": False}


def naive_trees(spark, run_dir: str, targets: np.ndarray):
    """One row per target: its 2-hop tree by joins, every tree node's features attached."""
    g = versioned.resolve(run_dir, "graph")
    nb = spark.read.parquet(str(versioned.resolve(run_dir, "neighbors") / "neighbors"))
    feat = spark.read.parquet(str(g / "nodes")).select("node", "features")
    t = spark.createDataFrame(pa.table({"target": targets}))
    hop1 = (t.join(nb, t.target == nb.node)
            .select("target", "weights", F.posexplode("neighbors").alias("p1", "n1"))
            .select("target", "p1", "n1", F.col("weights")[F.col("p1")].alias("w1")))
    hop2 = (hop1.join(nb, hop1.n1 == nb.node)
            .select("target", "p1", "weights", F.posexplode("neighbors").alias("p2", "n2"))
            .select("target", "p1", "p2", F.col("weights")[F.col("p2")].alias("w2"), "n2"))
    leaves = (hop2.join(feat, hop2.n2 == feat.node)
              .groupBy("target").agg(F.sort_array(F.collect_list(F.struct(
                  "p1", "p2", "w2", F.col("features").alias("f")))).alias("leaves")))
    mids = (hop1.join(feat, hop1.n1 == feat.node)
            .groupBy("target").agg(F.sort_array(F.collect_list(F.struct(
                "p1", "w1", F.col("features").alias("f")))).alias("mids")))
    return (leaves.join(mids, "target").join(feat, F.col("target") == feat.node)
            .select("target", F.col("features").alias("f0"), "mids", "leaves"))


def naive_forward(spark, trees, model: PinSage, T: int, dim: int):
    """Each Arrow batch of trees as one minibatch in the trainer's layout; ``PinSage.forward``."""
    blob = spark.sparkContext.broadcast(model.state_dict())
    spec = (model.feature_dim, model.hidden_dim, model.num_layers, model.aggregator)

    def run(batches):
        m = PinSage(*spec, num_items=1, id_embedding="off")
        m.load_state_dict(blob.value)
        m.eval()
        for rb in batches:
            B = rb.num_rows
            if B == 0:
                continue
            f0 = np.asarray(rb.column("f0").flatten()).reshape(B, dim)
            _, w1, f1 = rb.column("mids").flatten().flatten()
            _, _, w2, f2 = rb.column("leaves").flatten().flatten()
            w1 = np.array(w1).reshape(B, T)
            w2 = np.array(w2).reshape(B * T, T)
            # Layer 0: the targets; layer 1: + their neighbours (target b's slot i
            # at B + b T + i); layer 2: + the neighbours of those.
            sizes = [B, B + B * T, B + B * T + B * T * T]
            idx0 = B + np.arange(B * T).reshape(B, T)
            idx1 = np.concatenate([idx0, sizes[1] + np.arange(B * T * T).reshape(B * T, T)])
            nodes = [torch.arange(s) for s in sizes]
            feats = torch.from_numpy(np.concatenate([
                f0, np.asarray(f1.flatten()).reshape(B * T, dim),
                np.asarray(f2.flatten()).reshape(B * T * T, dim)]))
            with torch.no_grad():
                z = m(nodes, feats, [torch.from_numpy(idx0), torch.from_numpy(idx1)],
                      [torch.from_numpy(w1), torch.from_numpy(np.concatenate([w1, w2]))])
            yield pa.RecordBatch.from_arrays(
                [rb.column("target"), pa.ListArray.from_arrays(
                    pa.array(np.arange(0, (B + 1) * z.shape[1], z.shape[1], dtype=np.int32)),
                    pa.array(z.numpy().reshape(-1)))], names=["target", "embedding"])

    return trees.mapInArrow(run, "target long, embedding array<float>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--aggregator", default="importance")
    ap.add_argument("--naive-targets", type=int, nargs=2, default=[10_000, 100_000],
                    metavar=("N1", "N2"), help="the two subsample sizes of (c)")
    ap.add_argument("--message-dtype", default="float32")
    ap.add_argument("--partitions", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    n, T, K = args.items, args.neighbors, 2

    torch.manual_seed(args.seed)
    model = PinSage(args.features, args.hidden, K, args.aggregator, num_items=n,
                    id_embedding="off").eval()
    features, nbr, w = synthetic(n, T, args.features, args.seed)
    print(f"graph: {n:,} items, T={T}, K={K}, hidden {args.hidden}, {args.features} features, "
          f"aggregator {args.aggregator}, messages {args.message_dtype}")

    torch.set_num_threads(SPARK_CORES)
    feats_t = torch.from_numpy(features)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model.full_graph_embed(torch.arange(n), feats_t, torch.from_numpy(nbr),
                                     torch.from_numpy(w)).numpy()
    old_s = time.perf_counter() - t0
    print(f"(b0) full_graph_embed, {SPARK_CORES} threads: {old_s:8.2f} s  {n / old_s:10,.0f} nodes/s "
          f"({n / old_s / SPARK_CORES:,.0f} per core)")
    t0 = time.perf_counter()
    with torch.no_grad():
        fast = sparse_embed(model, feats_t, nbr, w).numpy()
    mem_s = time.perf_counter() - t0
    print(f"(b1) sparse_embed, {SPARK_CORES} threads    : {mem_s:8.2f} s  {n / mem_s:10,.0f} nodes/s "
          f"({n / mem_s / SPARK_CORES:,.0f} per core; max |b1-b0| {np.abs(fast - ref).max():.1e})")
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)
    del fast

    spark = build_spark(f"local[{SPARK_CORES}]", app_name="bench-inference")
    spark.range(10).count()  # JVM and Python workers up before timing
    with tempfile.TemporaryDirectory() as tmp:
        publish_inputs(tmp, model, features, nbr, w)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # The bench's model has none of the optional query-side extras the config may name.
            extras = [f"model.{k}=false" for k in ("item_bias", "query_offsets")
                      if k in compose("config").model]
            cfg = compose("config", overrides=[
                f"run_dir={tmp}", f"model.num_layers={K}", f"model.hidden_dim={args.hidden}",
                f"model.aggregator={args.aggregator}", "model.id_embedding=off",
                "model.head_layers=0", f"sample.num_neighbors={T}", *extras,
                f"infer.message_dtype={args.message_dtype}", f"infer.partitions={args.partitions}"])
        t0 = time.perf_counter()
        result = run_infer(spark, cfg)
        spark_s = time.perf_counter() - t0
        err = np.abs(read_embeddings(tmp).matrix - ref).max()
        print(f"(a) spark bottom-up, local[{SPARK_CORES}]   : {spark_s:8.2f} s  {n / spark_s:10,.0f} "
              f"nodes/s ({n / spark_s / SPARK_CORES:,.0f} per core; {result.counts['partitions']} "
              f"partitions; max |a-b0| {err:.1e})")

        sub = {}
        # An untimed small run first: its Python workers and code paths warm, so that
        # neither timed run pays a one-off start-up the other does not.
        sizes = sorted({min(n, c) for c in args.naive_targets})
        for i, size in enumerate([min(n, 200), *sizes]):
            targets = np.sort(np.random.default_rng(args.seed).choice(
                n, size=size, replace=False)).astype(np.int64)
            t0 = time.perf_counter()
            out = naive_forward(spark, naive_trees(spark, tmp, targets), model, T, args.features)
            rows = out.toArrow()
            if i == 0:
                continue
            sub[size] = time.perf_counter() - t0
            got = np.asarray(rows.column("embedding").combine_chunks().flatten()
                             ).reshape(-1, args.hidden)
            err = np.abs(got - ref[rows.column("target").to_numpy()]).max()
            print(f"(c) spark per-node trees, {size:,} seeded targets: {sub[size]:.1f} s "
                  f"({size / sub[size]:,.0f} nodes/s whole; max |c-b0| {err:.1e})")
        (n1, t1), (n2, t2) = sorted(sub.items())[0], sorted(sub.items())[-1]
        per_target = (t2 - t1) / (n2 - n1) if n2 > n1 else t1 / n1
        naive_s = t1 + (n - n1) * per_target
        print(f"(c) spark per-node trees, all   : {naive_s:8.2f} s  {n / naive_s:10,.0f} nodes/s "
              f"(t({n1:,}) + {n - n1:,} x {per_target * 1e3:.3f} ms marginal per target; "
              f"fixed cost {t1 - n1 * per_target:.1f} s)")
    spark.stop()
    print(f"full_graph_embed_nodes_per_s_per_core={n / old_s / SPARK_CORES:.0f}")
    print(f"reference_nodes_per_s_per_core={n / mem_s / SPARK_CORES:.0f}")
    print(f"spark_nodes_per_s_per_core={n / spark_s / SPARK_CORES:.0f}")
    print(f"inference_overhead_full_graph_embed={spark_s / old_s:.2f}")
    print(f"inference_overhead={spark_s / mem_s:.2f}")
    print(f"bottom_up_speedup={naive_s / spark_s:.2f}")

if __name__ == "__main__":
    main()
