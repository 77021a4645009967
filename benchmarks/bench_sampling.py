"""Random-walk sampling: the Spark job against the random-access memory limit.

On a synthetic power-law bipartite graph it times

  (a) a single-process vectorised NumPy walk over the same CSR with the same
      parameters, top-T counting included (NumPy's own PCG64 generator): the
      reference for what one core can do against random memory access;
  (b) the Spark job in memory mode on local[2], from reading the training
      edges to the published ``neighbors`` stage (SparkSession start-up
      excluded);
  (c) the Spark job in join mode, on a smaller graph.

Throughput is item-to-item hops per second (walks x expected hops per walk).
The last line is ``sampling_speed_ratio=<(b)/(a)>``; the goal is >= 1.0.

    .venv/bin/python benchmarks/bench_sampling.py            # ~5M edges
    .venv/bin/python benchmarks/bench_sampling.py --edges 500000 --walks 100   # quick look
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import SampleConfig  # noqa: E402
from pipeline.io import versioned  # noqa: E402
from pipeline.sampling import Stages, expected_hops, publish_neighbors  # noqa: E402
from pipeline.sampling.walks import build_csr  # noqa: E402
from pipeline.spark import build_spark  # noqa: E402


def power_law_graph(n_users: int, n_items: int, n_edges: int, seed: int):
    """User -> item edges: Zipf-like item popularity, heavy-tailed user activity."""
    g = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    activity = g.pareto(1.5, n_users) + 1.0
    deg = np.maximum(1, np.round(activity / activity.sum() * n_edges)).astype(np.int64)
    src = np.repeat(np.arange(n_users, dtype=np.int64), deg)
    dst = g.choice(n_items, size=len(src), p=pop)
    key = np.unique(src * n_items + dst)
    return n_items + key // n_items, key % n_items


def publish_split(run_dir: str, src, dst) -> str:
    """Put the edges where the sampling job reads them: a ``split`` stage version."""
    fp = versioned.fingerprint({"bench": len(src)})
    with versioned.publish(run_dir, "split", fp) as out:
        Path(out.table_path("train_edges")).mkdir()
        pq.write_table(pa.table({"src": src, "dst": dst,
                                 "weight": np.ones(len(src), np.float32),
                                 "time": pa.nulls(len(src), pa.int64())}),
                       Path(out.table_path("train_edges")) / "part-0.parquet")
    return out.version


def reference(src, dst, n_nodes, n_items, s: SampleConfig, seed: int) -> tuple[float, int]:
    """Plain NumPy walks with PCG64 over the CSR; returns (seconds, hops)."""
    csr = build_csr(src, dst, np.ones(len(src)), n_nodes, n_items, True)
    indptr, nbrs, deg = csr.indptr, csr.nbrs, csr.deg
    gen = np.random.default_rng(seed)
    chunk = max(1, (1 << 20) // s.num_walks)
    hops = 0
    t0 = time.perf_counter()
    for lo in range(0, n_items, chunk):
        starts = np.arange(lo, min(lo + chunk, n_items), dtype=np.int64)
        owner = np.repeat(np.arange(len(starts)), s.num_walks)
        cur = starts[owner]
        live = deg[cur] > 0
        owner, cur = owner[live], cur[live]
        start = starts[owner]
        seen_o, seen_v = [], []
        for _ in range(s.walk_length):
            go = gen.random(len(cur)) >= s.restart_prob
            owner, cur, start = owner[go], cur[go], start[go]
            for _half in range(2):
                d = deg[cur]
                cur = nbrs[indptr[cur] + (gen.random(len(cur)) * d).astype(np.int64)].astype(np.int64)
            hops += len(cur)
            away = cur != start
            seen_o.append(owner[away])
            seen_v.append(cur[away])
        key, count = np.unique(np.concatenate(seen_o) * n_items + np.concatenate(seen_v),
                               return_counts=True)
        o, v = key // n_items, key % n_items
        order = np.lexsort((v, -count, o))
        o, v, count = o[order], v[order], count[order]
        first = np.searchsorted(o, np.arange(len(starts) + 1))
        top = (np.arange(len(o)) - first[o]) < s.num_neighbors
        totals = np.bincount(o[top], weights=count[top], minlength=len(starts))
        _ = (v[top], (count[top] / totals[o[top]]).astype(np.float32))
    return time.perf_counter() - t0, hops


def spark_job(spark, run_dir: str, split_version: str, n_nodes: int, n_items: int,
              s: SampleConfig, seed: int) -> float:
    t0 = time.perf_counter()
    publish_neighbors(spark, Stages(run_dir, force=True), s, seed=seed, split_version=split_version,
                      n_nodes=n_nodes, n_items=n_items, bipartite=True,
                      partitions=2 * spark.sparkContext.defaultParallelism)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=400_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=5_000_000)
    ap.add_argument("--walks", type=int, default=1200)
    ap.add_argument("--walk-length", type=int, default=3)
    ap.add_argument("--restart-prob", type=float, default=0.5)
    ap.add_argument("--join-edges", type=int, default=200_000)
    ap.add_argument("--join-walks", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    s = SampleConfig(num_walks=args.walks, walk_length=args.walk_length,
                     restart_prob=args.restart_prob, num_neighbors=10, mode="memory")
    src, dst = power_law_graph(args.users, args.items, args.edges, args.seed)
    n_nodes = args.items + args.users
    per_walk = expected_hops(s.walk_length, s.restart_prob)
    print(f"graph: {args.items:,} items, {args.users:,} users, {len(src):,} edges; "
          f"{s.num_walks} walks/item, length {s.walk_length}, restart {s.restart_prob}")

    ref_s, ref_hops = reference(src, dst, n_nodes, args.items, s, args.seed)
    hops = args.items * s.num_walks * per_walk
    ref_rate = ref_hops / ref_s
    print(f"(a) numpy reference, 1 process : {ref_s:7.2f} s  {ref_rate:12,.0f} hops/s")

    spark = build_spark("local[2]", app_name="bench-sampling")
    spark.range(10).count()  # JVM and Python workers up before timing
    with tempfile.TemporaryDirectory() as tmp:
        split_version = publish_split(tmp, src, dst)
        mem_s = spark_job(spark, tmp, split_version, n_nodes, args.items, s, args.seed)
        mem_rate = hops / mem_s
        print(f"(b) spark memory mode, local[2]: {mem_s:7.2f} s  {mem_rate:12,.0f} hops/s")

    js, jd = power_law_graph(args.join_edges // 4, args.items // 10, args.join_edges, args.seed)
    sj = SampleConfig(num_walks=args.join_walks, walk_length=s.walk_length,
                      restart_prob=s.restart_prob, num_neighbors=10, mode="join")
    j_nodes = args.items // 10 + args.join_edges // 4
    with tempfile.TemporaryDirectory() as tmp:
        split_version = publish_split(tmp, js, jd)
        join_s = spark_job(spark, tmp, split_version, j_nodes, args.items // 10, sj, args.seed)
        join_rate = args.items // 10 * sj.num_walks * per_walk / join_s
        print(f"(c) spark join mode, local[2]  : {join_s:7.2f} s  {join_rate:12,.0f} hops/s "
              f"({len(js):,} edges, {sj.num_walks} walks/item)")
    spark.stop()
    print(f"sampling_speed_ratio={mem_rate / ref_rate:.2f}")


if __name__ == "__main__":
    main()
