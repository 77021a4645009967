"""Whole-graph inference: the bottom-up Spark job against in-memory and naive per-node references.

On a synthetic graph (power-law neighbour popularity, every item with a full
list of T neighbours, features only: ``model.id_embedding=off``) and a
randomly initialised model it times

  (a) the Spark job ``run_infer`` on local[2], from reading the published
      stages to the published ``embeddings`` stage (SparkSession start-up
      excluded): one map/route/reduce pass and one shuffle per layer;
  (b) ``PinSage.full_graph_embed`` in one process on the same neighbour
      table, already in memory: the floor for layer-wise inference;
  (c) the naive Spark alternative: every target's own K-hop tree
      materialised by joining the neighbour lists K times (plus the features
      of all T + T^2 tree nodes), then the trainer's minibatch
      ``PinSage.forward`` over batches of those trees. It runs on a seeded
      subsample of targets and its per-node throughput is extrapolated to the
      whole graph (said so in its line).

Both Spark results are checked against (b). The last two lines are
``inference_overhead=<(a)/(b)>`` (goal <= 5) and ``bottom_up_speedup=<(c)/(a)>``
(goal >= 5), times for the whole graph.

    .venv/bin/python benchmarks/bench_inference.py                  # 1M items, T=10, K=2, d=64
    .venv/bin/python benchmarks/bench_inference.py --items 100000   # quick look
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
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
from pipeline.spark import build_spark  # noqa: E402

ROWS_PER_FILE = 250_000


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


def publish_inputs(run_dir: str, model: PinSage, features, nbr, w) -> None:
    """The ``graph``, ``neighbors`` and ``model`` stages in the formats their jobs publish."""
    n, T = nbr.shape
    node = pa.array(np.arange(n, dtype=np.int64))
    with versioned.publish(run_dir, "graph", "bench") as out:
        _write(pa.table({"node": node, "id": pa.array([f"i{i}" for i in range(n)]),
                         "type": pa.array(["item"] * n), "features": _lists(features, pa.float32())}),
               out.table_path("nodes"))
        out.manifest["counts"] = {"feature_dim": features.shape[1], "nodes": {"item": n}}
    with versioned.publish(run_dir, "neighbors", "bench", config={"num_neighbors": T}) as out:
        _write(pa.table({"node": node, "neighbors": _lists(nbr, pa.int64()),
                         "weights": _lists(w, pa.float32())}), out.table_path("neighbors"))
    with versioned.publish(run_dir, "model", "bench") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest["model"] = {"feature_dim": features.shape[1], "num_items": n,
                                 "num_neighbors": T, "num_layers": model.num_layers,
                                 "hidden_dim": model.hidden_dim, "aggregator": model.aggregator,
                                 "id_embedding": "off", "id_buckets": 1}


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
    ap.add_argument("--naive-targets", type=int, default=20_000)
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

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model.full_graph_embed(torch.arange(n), torch.from_numpy(features),
                                     torch.from_numpy(nbr), torch.from_numpy(w)).numpy()
    mem_s = time.perf_counter() - t0
    print(f"(b) full_graph_embed, 1 process : {mem_s:8.2f} s  {n / mem_s:10,.0f} nodes/s")

    spark = build_spark("local[2]", app_name="bench-inference")
    spark.range(10).count()  # JVM and Python workers up before timing
    with tempfile.TemporaryDirectory() as tmp:
        publish_inputs(tmp, model, features, nbr, w)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[
                f"run_dir={tmp}", f"model.num_layers={K}", f"model.hidden_dim={args.hidden}",
                f"model.aggregator={args.aggregator}", "model.id_embedding=off",
                f"sample.num_neighbors={T}", f"infer.message_dtype={args.message_dtype}",
                f"infer.partitions={args.partitions}"])
        t0 = time.perf_counter()
        result = run_infer(spark, cfg)
        spark_s = time.perf_counter() - t0
        err = np.abs(read_embeddings(tmp).matrix - ref).max()
        print(f"(a) spark bottom-up, local[2]   : {spark_s:8.2f} s  {n / spark_s:10,.0f} nodes/s  "
              f"({result.counts['partitions']} partitions; max |a-b| {err:.1e})")

        targets = np.sort(np.random.default_rng(args.seed).choice(
            n, size=min(n, args.naive_targets), replace=False)).astype(np.int64)
        t0 = time.perf_counter()
        out = naive_forward(spark, naive_trees(spark, tmp, targets), model, T, args.features)
        rows = out.toArrow()
        naive_sub = time.perf_counter() - t0
        got = np.asarray(rows.column("embedding").combine_chunks().flatten()).reshape(-1, args.hidden)
        err = np.abs(got - ref[rows.column("target").to_numpy()]).max()
        naive_s = naive_sub * n / len(targets)
        print(f"(c) spark per-node trees        : {naive_s:8.2f} s  {len(targets) / naive_sub:10,.0f} "
              f"nodes/s  (extrapolated from {len(targets):,} seeded targets in {naive_sub:.1f} s; "
              f"max |c-b| {err:.1e})")
    spark.stop()
    print(f"inference_overhead={spark_s / mem_s:.2f}")
    print(f"bottom_up_speedup={naive_s / spark_s:.2f}")


if __name__ == "__main__":
    main()
