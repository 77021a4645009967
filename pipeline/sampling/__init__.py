"""Sampling: evaluation split, importance neighbourhoods, training pairs, minibatches.

Publishes four stages, each reused when its inputs and config are unchanged:

* ``split``: ``train_edges`` (the graph the rest may see) and ``holdout``;
* ``neighbors``: ``neighbors`` (top-T most visited items, weights = visit
  share) and ``hard_candidates`` (items in the hard window of the ranking);
* ``pairs``: ``pairs`` (query, positive) and ``hard_negatives`` (per query,
  candidates minus its positives);
* ``batches``: ``train`` and ``validation``, one row per minibatch.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import pipeline
from pipeline.errors import PipelineError
from pipeline.ingest import read_graph
from pipeline.io import schemas, versioned
from pipeline.sampling import batches as batching
from pipeline.sampling import join_mode, memory_mode, pairs as pairing, split as splitting
from pipeline.sampling.walks import hard_window

log = logging.getLogger(__name__)

MODES = ("memory", "join")
ROWS_PER_FILE = 1_000_000


@dataclass
class SampleResult:
    versions: dict[str, str] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def _write(df: DataFrame, path: str, key: str, rows_per_file: int, n_rows: int) -> None:
    """Write sorted by ``key`` into files that depend only on the data, not on partitioning.

    Same seed, same bytes: rows go to file ``key // rows_per_file`` whatever
    partitioning produced them.
    """
    n_files = max(1, math.ceil(n_rows / rows_per_file))
    (df.repartition(n_files, F.floor(F.col(key) / rows_per_file))
     .sortWithinPartitions(key).write.parquet(path))


def _validate(cfg) -> None:
    s = cfg.sample
    if s.mode not in MODES:
        raise PipelineError(f"sample.mode must be one of {', '.join(MODES)}, got '{s.mode}'")
    checks = [(s.num_walks >= 1, "sample.num_walks must be >= 1"),
              (s.walk_length >= 1, "sample.walk_length must be >= 1"),
              (0 <= s.restart_prob < 1, "sample.restart_prob must be in [0, 1)"),
              (s.num_neighbors >= 1, "sample.num_neighbors must be >= 1"),
              (s.batch_size >= 1, "sample.batch_size must be >= 1"),
              (0 <= s.val_fraction < 1, "sample.val_fraction must be in [0, 1)"),
              (len(s.hard_window) == 2 and 0 <= s.hard_window[0] <= s.hard_window[1] <= 1,
               "sample.hard_window must be two fractions [lo, hi] with 0 <= lo <= hi <= 1")]
    for ok, msg in checks:
        if not ok:
            raise PipelineError(msg)


class _Stages:
    """Publish-or-reuse bookkeeping shared by the four stages."""

    def __init__(self, cfg, result: SampleResult):
        self.cfg, self.result = cfg, result

    def fingerprint(self, stage: str, inputs: dict[str, str], params: dict) -> str:
        return versioned.fingerprint({"code": pipeline.__version__, "stage": stage,
                                      "inputs": inputs, "params": params})

    def reuse(self, stage: str, fp: str) -> bool:
        found = versioned.find_matching(self.cfg.run_dir, stage, fp)
        if found and not self.cfg.force:
            self.result.versions[stage] = found
            self.result.counts[stage] = versioned.read_manifest(self.cfg.run_dir, stage, found)["counts"]
            self.result.reused.append(stage)
            log.info("%s/%s already built from these inputs; reusing it", stage, found)
            return True
        return False

    def publish(self, stage: str, fp: str, inputs: dict[str, str], params: dict):
        return versioned.publish(self.cfg.run_dir, stage, fp, config=params, inputs=inputs,
                                 keep=self.cfg.keep_versions)

    def done(self, stage: str, out, counts: dict) -> None:
        self.result.versions[stage] = out.version
        self.result.counts[stage] = counts


def run_sample(spark: SparkSession, cfg) -> SampleResult:
    """Run split -> walks -> pairs -> batches on the latest graph; publish each stage."""
    _validate(cfg)
    s, run_dir, seed = cfg.sample, cfg.run_dir, int(cfg.seed)
    nodes, edges, graph_manifest = read_graph(spark, run_dir)
    graph_version = graph_manifest["version"]
    n_items = int(graph_manifest["counts"]["nodes"].get(schemas.ITEM, 0))
    n_nodes = int(graph_manifest["counts"]["nodes_out"])
    bipartite = bool(graph_manifest["bipartite"])
    result = SampleResult()
    st = _Stages(cfg, result)
    partitions = s.partitions or 2 * spark.sparkContext.defaultParallelism

    # 1. Evaluation split, before anything sees the edges.
    split_params = {"protocol": cfg.eval.protocol, "holdout_fraction": cfg.eval.holdout_fraction,
                    "seed": seed}
    inputs = {"graph": graph_version}
    fp = st.fingerprint("split", inputs, split_params)
    if not st.reuse("split", fp):
        t0 = time.perf_counter()
        train, held = splitting.split_edges(edges, cfg.eval.protocol, bipartite, seed,
                                            cfg.eval.holdout_fraction)
        with st.publish("split", fp, inputs, split_params) as out:
            train.orderBy("src", "dst").write.parquet(out.table_path("train_edges"))
            held.orderBy("kind", "user").coalesce(1).write.parquet(out.table_path("holdout"))
            by_kind = {r["kind"]: r["count"] for r in spark.read.parquet(out.table_path("holdout"))
                       .groupBy("kind").count().collect()}
            counts = {"edges_in": graph_manifest["counts"]["edges_out"],
                      "train_edges": spark.read.parquet(out.table_path("train_edges")).count(),
                      "validation": by_kind.get("validation", 0), "test": by_kind.get("test", 0),
                      "seconds": round(time.perf_counter() - t0, 2)}
            out.manifest.update({"counts": counts, "protocol": cfg.eval.protocol,
                                 "schema": {"train_edges": schemas.describe(schemas.EDGES),
                                            "holdout": schemas.describe(schemas.HOLDOUT)}})
        st.done("split", out, counts)
    split_dir = versioned.resolve(run_dir, "split", result.versions["split"])
    train_edges = spark.read.schema(schemas.EDGES).parquet(str(split_dir / "train_edges"))

    # 2. Random walks -> importance neighbourhoods and hard-negative candidates.
    window = hard_window(n_items, s.hard_window[0], s.hard_window[1], s.num_neighbors)
    walk_params = {"num_walks": s.num_walks, "walk_length": s.walk_length,
                   "restart_prob": s.restart_prob, "num_neighbors": s.num_neighbors,
                   "hard_window": list(s.hard_window), "num_hard": s.num_hard, "seed": seed}
    inputs = {"split": result.versions["split"]}
    fp = st.fingerprint("neighbors", inputs, walk_params)
    if not st.reuse("neighbors", fp):
        t0 = time.perf_counter()
        kw = dict(num_walks=s.num_walks, walk_length=s.walk_length, restart_prob=s.restart_prob,
                  seed=seed, num_neighbors=s.num_neighbors, window=window, num_hard=s.num_hard,
                  partitions=partitions)
        if s.mode == "memory":
            csr = memory_mode.load_csr(str(split_dir / "train_edges"), n_nodes, n_items, bipartite)
            ranked = memory_mode.sample(spark, csr, **kw)
        else:
            ranked = join_mode.sample(spark, train_edges, n_items, bipartite, **kw)
        with st.publish("neighbors", fp, inputs, {**walk_params, "mode": s.mode}) as out:
            _write(ranked.select("node", "neighbors", "weights"), out.table_path("neighbors"),
                   "node", ROWS_PER_FILE, n_items)
            _write(ranked.select("node", "hard"), out.table_path("hard_candidates"),
                   "node", ROWS_PER_FILE, n_items)
            written = spark.read.parquet(out.table_path("neighbors"))
            stats = written.agg(F.count(F.lit(1)).alias("items"),
                                F.sum((F.size("neighbors") == 0).cast("int")).alias("empty"),
                                F.avg(F.size("neighbors")).alias("avg")).first()
            seconds = time.perf_counter() - t0
            counts = {"items": int(stats["items"]), "empty_neighborhoods": int(stats["empty"] or 0),
                      "avg_neighbors": round(float(stats["avg"] or 0), 3),
                      "walks": n_items * s.num_walks, "hard_window_ranks": list(window),
                      "mode": s.mode, "seconds": round(seconds, 2)}
            out.manifest.update({"counts": counts, "schema": {
                "neighbors": schemas.describe(schemas.NEIGHBORS),
                "hard_candidates": {"node": "bigint", "hard": "array<bigint>"}}})
        st.done("neighbors", out, counts)
        log.info("neighbors: %d items in %.1fs (%s mode)", counts["items"], seconds, s.mode)
    nb_dir = versioned.resolve(run_dir, "neighbors", result.versions["neighbors"])
    neighbors = spark.read.parquet(str(nb_dir / "neighbors"))
    ranked = neighbors.join(spark.read.parquet(str(nb_dir / "hard_candidates")), "node")

    # 3. Positive pairs and hard negatives.
    has_time = train_edges.where(F.col("time").isNotNull()).limit(1).count() > 0
    pair_params = {"pair_window": s.pair_window, "pairs_per_item": s.pairs_per_item}
    inputs = {"split": result.versions["split"], "neighbors": result.versions["neighbors"]}
    fp = st.fingerprint("pairs", inputs, pair_params)
    if not st.reuse("pairs", fp):
        pairs, how = pairing.build_pairs(train_edges, ranked, bipartite=bipartite,
                                         has_time=has_time, window=s.pair_window,
                                         per_item=s.pairs_per_item)
        with st.publish("pairs", fp, inputs, pair_params) as out:
            pairs.orderBy("query", "positive").write.parquet(out.table_path("pairs"))
            written = spark.read.parquet(out.table_path("pairs"))
            pairing.hard_negatives(written, ranked).orderBy("query").write.parquet(
                out.table_path("hard_negatives"))
            hard = spark.read.parquet(out.table_path("hard_negatives"))
            counts = {"pairs": written.count(), "queries": hard.count(),
                      "avg_hard_candidates": round(float(
                          hard.agg(F.avg(F.size("candidates"))).first()[0] or 0), 3)}
            out.manifest.update({"counts": counts, "how": how, "schema": {
                "pairs": schemas.describe(schemas.PAIRS),
                "hard_negatives": schemas.describe(schemas.HARD_NEGATIVES)}})
        st.done("pairs", out, counts)
    pairs_dir = versioned.resolve(run_dir, "pairs", result.versions["pairs"])

    # 4. Minibatches with their K-layer computation graphs.
    batch_params = {"batch_size": s.batch_size, "val_fraction": s.val_fraction,
                    "easy_negatives": s.easy_negatives, "batches_per_file": s.batches_per_file,
                    "num_layers": cfg.model.num_layers, "seed": seed}
    inputs = {"pairs": result.versions["pairs"], "neighbors": result.versions["neighbors"]}
    fp = st.fingerprint("batches", inputs, batch_params)
    if not st.reuse("batches", fp):
        nbr, w = batching.dense_neighbors(neighbors, n_items, s.num_neighbors)
        specs = batching.assign(spark.read.parquet(str(pairs_dir / "pairs")),
                                spark.read.parquet(str(pairs_dir / "hard_negatives")),
                                seed=seed, batch_size=s.batch_size, val_fraction=s.val_fraction)
        with st.publish("batches", fp, inputs, batch_params) as out:
            counts = {}
            for split_name, spec in specs.items():
                rows = batching.build(spark, spec, split_name, nbr, w,
                                      num_layers=cfg.model.num_layers,
                                      easy_negatives=s.easy_negatives, seed=seed)
                n_batches = spec.count()
                _write(rows, out.table_path(split_name), "batch", s.batches_per_file, n_batches)
                counts[f"{split_name}_batches"] = n_batches
            counts["num_layers"] = cfg.model.num_layers
            out.manifest.update({"counts": counts, "schema": {
                sp: schemas.describe(schemas.BATCHES) for sp in batching.SPLITS}})
        st.done("batches", out, counts)
    spark.catalog.clearCache()
    return result
