"""Sampling: importance neighbourhoods, training pairs, minibatches.

Publishes (or reuses) the ``split`` first (:mod:`pipeline.split`), so no held-out
edge reaches a walk, then three stages of its training edges, each reused
when its inputs and config are unchanged:

* ``neighbors``: ``neighbors`` (top-T items by degree-corrected expected walk
  visits, weights = score share) and ``hard_candidates`` (items in the hard
  window of the same ranking);
* ``pairs``: ``pairs`` (query, positive) and ``hard_negatives`` (per query,
  candidates minus its positives);
* ``batches``: ``train`` and ``validation``, one row per minibatch, and
  ``item_weights`` (how easy negatives are drawn).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
from omegaconf import OmegaConf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.ingest import read_graph
from pipeline.io import schemas, versioned
from pipeline.io.manifests import GraphManifest
from pipeline.io.stage import Stage
from pipeline.sampling import batches as batching
from pipeline.sampling import incremental, join_mode, memory_mode, pairs as pairing
from pipeline.sampling import ppr
from pipeline.sampling.ppr import hard_window
from pipeline.split import new_items, publish_split

log = logging.getLogger(__name__)

ROWS_PER_FILE = 1_000_000


@dataclass
class SampleResult:
    versions: dict[str, str] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    inductive: SampleResult | None = None   # split.protocol=new_items: the model's training view


def _write(df: DataFrame, path: str, key: str, rows_per_file: int, n_rows: int) -> None:
    """Write sorted by ``key`` into files that depend only on the data, not on partitioning.

    Same seed, same bytes: rows go to file ``key // rows_per_file`` whatever
    partitioning produced them.
    """
    n_files = max(1, math.ceil(n_rows / rows_per_file))
    (df.repartition(n_files, F.floor(F.col(key) / rows_per_file))
     .sortWithinPartitions(key).write.parquet(path))


def _validate(cfg) -> None:
    config.check(cfg, "sample")
    s = cfg.sample
    if not s.push_threshold < 1 - s.restart_prob:
        raise PipelineError("sample.push_threshold must be in [0, 1 - sample.restart_prob) "
                            f"(0 = exact), got {s.push_threshold}")
    if not (len(s.hard_window) == 2 and 0 <= s.hard_window[0] <= s.hard_window[1] <= 1):
        raise PipelineError("sample.hard_window must be two fractions [lo, hi] with "
                            f"0 <= lo <= hi <= 1, got {list(s.hard_window)}")


class Stages:
    """The sampling stages' runners, and what each (and the split before them) published or
    reused."""

    def __init__(self, run_dir: str, *, force: bool = False, keep: int = 3,
                 result: SampleResult | None = None):
        self.run_dir, self.force, self.keep = run_dir, force, keep
        self.result = result or SampleResult()

    def stage(self, name: str, inputs: dict[str, str], params: dict) -> Stage:
        return Stage(self.run_dir, name, inputs, params, keep=self.keep, force=self.force)

    def reuse(self, stage: Stage) -> bool:
        found = stage.reusable()
        if found:
            self.record(stage.name, found, stage.manifest(found)["counts"], reused=True)
        return found is not None

    def done(self, stage: str, out, counts: dict) -> None:
        self.record(stage, out.version, counts)

    def record(self, stage: str, version: str, counts: dict, reused: bool = False) -> None:
        """What ``stage`` published (or reused), in the run's result."""
        self.result.versions[stage] = version
        self.result.counts[stage] = counts
        if reused:
            self.result.reused.append(stage)


def neighbor_params(s, seed: int) -> dict:
    """What neighbourhoods depend on besides the graph: the fingerprint, and what an
    incremental run must find unchanged to reuse rows."""
    return {"walk_length": s.walk_length, "restart_prob": s.restart_prob,
            "push_threshold": s.push_threshold, "degree_exponent": s.degree_exponent,
            "num_neighbors": s.num_neighbors, "hard_window": list(s.hard_window),
            "num_hard": s.num_hard, "seed": seed}


def _quality(spark: SparkSession, s, seed: int, window: tuple[int, int], n_items: int,
             bipartite: bool, *, transitions=None, train_edges: DataFrame | None = None,
             partitions: int = 1) -> dict:
    """:func:`ppr.quality` on a seeded sample of items, by the mode's own propagation (join
    mode: per start, in the tasks); memory mode also checks the unpruned visits against
    float64 power iteration."""
    t0 = time.perf_counter()
    chosen = np.sort(np.random.default_rng(seed).choice(
        n_items, size=min(s.quality_sample, n_items), replace=False)).astype(np.int64)
    walk = dict(walk_length=s.walk_length, restart_prob=s.restart_prob)
    kw = dict(seed=seed, push_threshold=s.push_threshold,
              factor=ppr.error_factor(s.walk_length, s.restart_prob, bipartite),
              degree_exponent=s.degree_exponent, num_neighbors=s.num_neighbors,
              window=window, num_hard=0)
    if transitions is None:
        out = ppr.quality(*join_mode.quality_per_start(spark, train_edges, n_items, bipartite,
                                                       chosen, partitions=partitions, **walk,
                                                       **kw))
    else:
        def visits(eps: float) -> ppr.Visits:
            return ppr.Visits.of(transitions, chosen,
                                 ppr.propagate(transitions, chosen, push_threshold=eps, **walk)[0])

        approx = visits(s.push_threshold)
        exact = visits(0.0) if s.push_threshold > 0 else approx
        out = ppr.quality(*ppr.quality_per_start(approx, exact, transitions.deg[chosen], **kw))
        out["power_iteration_max_error"] = ppr.power_iteration_error(transitions, exact, **walk)
    return {**out, "seconds": round(time.perf_counter() - t0, 2)}


def publish_neighbors(spark: SparkSession, st: Stages, s, *, seed: int, split_version: str,
                      n_nodes: int, n_items: int, bipartite: bool, partitions: int,
                      neighbors_from: str | None = None) -> str:
    """Rank every item's neighbours on the ``split`` stage's training graph; publish ``neighbors``.

    The score is the walks' expected visits, corrected for degree
    (:mod:`pipeline.sampling.ppr`). ``neighbors_from``: a previous
    ``neighbors`` version whose rows are reused for every item no changed edge
    can reach (:mod:`pipeline.sampling.incremental`); the table equals a full
    run's, so the fingerprint is the same.
    """
    window = hard_window(n_items, s.hard_window[0], s.hard_window[1], s.num_neighbors)
    params = neighbor_params(s, seed)
    inputs = {"split": split_version}
    stage = st.stage("neighbors", inputs, params)
    if st.reuse(stage):
        return st.result.versions["neighbors"]
    t0 = time.perf_counter()
    edges_dir = str(versioned.resolve(st.run_dir, "split", split_version) / "train_edges")
    plan, why = (incremental.plan(spark, st.run_dir, neighbors_from, split_version, params,
                                  stage.code_hashes, window, n_items, bipartite)
                 if neighbors_from else (None, ""))
    if why:
        log.info("ranking every item: cannot reuse neighbors/%s: %s", neighbors_from, why)
    starts = plan.starts if plan is not None else None
    kw = dict(walk_length=s.walk_length, restart_prob=s.restart_prob,
              push_threshold=s.push_threshold, degree_exponent=s.degree_exponent, seed=seed,
              num_neighbors=s.num_neighbors, window=window, num_hard=s.num_hard,
              partitions=partitions, starts=starts)
    transitions, train_edges = None, None
    if s.mode == "memory":
        transitions = memory_mode.load_transitions(edges_dir, n_nodes, n_items, bipartite)
        log.info("CSR: %d nodes, %d adjacency slots, weight scale %g, loaded in %.1fs", n_nodes,
                 len(transitions.nbrs), transitions.scale, time.perf_counter() - t0)
        ranked = memory_mode.sample(spark, transitions, **kw)
    else:
        train_edges = spark.read.schema(schemas.EDGES).parquet(edges_dir)
        ranked = join_mode.sample(spark, train_edges, n_items, bipartite, **kw)
    with stage.publish() as out:
        work = _write_neighbor_tables(spark, st.run_dir, out, ranked, plan, n_items)
        log.info("ranked %d items in %.1fs", n_items, time.perf_counter() - t0)
        counts = _neighbor_counts(spark, out, s.mode, window, plan, work, n_items, t0)
        seconds = counts["seconds"]
        if s.quality_sample:
            counts["quality"] = _quality(spark, s, seed, window, n_items, bipartite,
                                         transitions=transitions, train_edges=train_edges,
                                         partitions=partitions)
            log.info("neighbourhood quality: %s", counts["quality"])
        out.manifest.update({"counts": counts, "schema": {
            "neighbors": schemas.describe(schemas.NEIGHBORS),
            "hard_candidates": {"node": "bigint", "hard": "array<bigint>"}}})
    st.done("neighbors", out, counts)
    log.info("neighbors: %d items in %.1fs (%s mode), %d empty neighbourhoods",
             counts["items"], seconds, s.mode, counts["empty_neighborhoods"])
    return out.version


def _write_neighbor_tables(spark: SparkSession, run_dir: str, out, ranked: DataFrame, plan,
                           n_items: int):
    """Write ``neighbors`` and ``hard_candidates`` into ``out``; the propagation's work
    (``total`` and ``max`` pushes per item).

    Both tables come from one propagation: it is written once, then its
    columns split (a Parquet column read is far cheaper than computing twice
    or caching). With an incremental ``plan`` the previous version's rows of
    every item no change reaches are added unchanged.
    """
    walked_dir = str(out.path / "walked")
    if plan is not None:
        prev_dir = versioned.check_version(run_dir, "neighbors", plan.previous)
        kept = (spark.read.parquet(str(prev_dir / "neighbors"))
                .join(spark.read.parquet(str(prev_dir / "hard_candidates")), "node")
                .join(plan.starts, "node", "left_anti").where(F.col("node") < n_items)
                .withColumn("pushes", F.lit(0).cast("long")))
        ranked = ranked.unionByName(kept.select(*ranked.columns))
    _write(ranked, walked_dir, "node", ROWS_PER_FILE, n_items)
    walked = spark.read.parquet(walked_dir)
    work = walked.agg(F.sum("pushes").alias("total"), F.max("pushes").alias("max")).first()
    for table, cols in (("neighbors", ["node", "neighbors", "weights"]),
                        ("hard_candidates", ["node", "hard"])):
        walked.select(*cols).sortWithinPartitions("node").write.parquet(out.table_path(table))
    shutil.rmtree(walked_dir)
    return work


def _neighbor_counts(spark: SparkSession, out, mode: str, window, plan, work, n_items: int,
                     t0: float) -> dict:
    """The ``neighbors`` manifest's counts, read back from the written table."""
    written = spark.read.parquet(out.table_path("neighbors"))
    stats = written.agg(F.count(F.lit(1)).alias("items"),
                        F.sum((F.size("neighbors") == 0).cast("int")).alias("empty"),
                        F.avg(F.size("neighbors")).alias("avg")).first()
    seconds = time.perf_counter() - t0
    pushes = int(work["total"] or 0)
    return {"items": int(stats["items"]), "empty_neighborhoods": int(stats["empty"] or 0),
            "avg_neighbors": round(float(stats["avg"] or 0), 3),
            "hard_window_ranks": list(window),
            "recomputed_items": n_items if plan is None else plan.recomputed,
            "reused_items": 0 if plan is None else plan.reused,
            "reused_from": None if plan is None else plan.previous,
            "changed_edges": None if plan is None else plan.changed_edges,
            "mode": mode, "seconds": round(seconds, 2),
            "pushes": pushes, "max_pushes_per_item": int(work["max"] or 0),
            "pushes_per_second": round(pushes / seconds)}


def _publish_pairs(spark: SparkSession, st: Stages, s, seed: int, train_edges: DataFrame,
                   ranked: DataFrame, bipartite: bool) -> None:
    """Publish ``pairs``: positive pairs from co-engagement, and each query's hard candidates."""
    result = st.result
    pair_params = {"pair_window": s.pair_window, "repeat_pairs": s.repeat_pairs, "seed": seed}
    inputs = {"split": result.versions["split"], "neighbors": result.versions["neighbors"]}
    stage = st.stage("pairs", inputs, pair_params)
    if not st.reuse(stage):
        has_time = train_edges.where(F.col("time").isNotNull()).limit(1).count() > 0
        pairs, how = pairing.build_pairs(train_edges, bipartite=bipartite, has_time=has_time,
                                         window=s.pair_window, seed=seed, repeat=s.repeat_pairs)
        with stage.publish() as out:
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


def _publish_batches(spark: SparkSession, st: Stages, cfg, nodes: DataFrame, neighbors: DataFrame,
                     n_items: int) -> None:
    """Publish ``batches``: minibatches holding their K-layer computation graphs.

    Hard candidates travel (through the whole computation graph) only when the
    curriculum uses them, so the stage depends on whether train.max_hard_negatives > 0.
    """
    s, seed, result = cfg.sample, int(cfg.seed), st.result
    pairs_dir = versioned.check_version(st.run_dir, "pairs", result.versions["pairs"])
    hard_candidates = s.num_hard if cfg.train.max_hard_negatives > 0 else 0
    batch_params = {"batch_size": s.batch_size, "val_fraction": s.val_fraction,
                    "easy_negatives": s.easy_negatives, "negative_power": s.negative_power,
                    "hard_candidates": hard_candidates, "batches_per_file": s.batches_per_file,
                    "num_layers": cfg.model.num_layers, "seed": seed}
    inputs = {"pairs": result.versions["pairs"], "neighbors": result.versions["neighbors"]}
    stage = st.stage("batches", inputs, batch_params)
    if not st.reuse(stage):
        pairs = spark.read.parquet(str(pairs_dir / "pairs"))
        specs = batching.assign(pairs, spark.read.parquet(str(pairs_dir / "hard_negatives"))
                                if hard_candidates else None,
                                seed=seed, batch_size=s.batch_size, val_fraction=s.val_fraction)
        weights = batching.item_weights(spark, pairs, nodes, neighbors, n_items=n_items,
                                        power=s.negative_power, seed=seed,
                                        val_fraction=s.val_fraction)
        with stage.publish() as out:
            weights_path = out.table_path("item_weights")
            _write(weights, weights_path, "node", ROWS_PER_FILE, n_items)
            counts = {}
            for split_name, spec in specs.items():
                rows = batching.build(spec, split_name, neighbors, weights_path,
                                      num_neighbors=s.num_neighbors,
                                      num_layers=cfg.model.num_layers,
                                      easy_negatives=s.easy_negatives, seed=seed)
                n_batches = spec.count()
                _write(rows, out.table_path(split_name), "batch", s.batches_per_file, n_batches)
                counts[f"{split_name}_batches"] = n_batches
            negative_items = (spark.read.parquet(weights_path).where(F.col("weight") > 0)
                              .count())
            counts.update(num_layers=cfg.model.num_layers, easy_negatives=s.easy_negatives,
                          hard_candidates=hard_candidates, negative_items=negative_items)
            out.manifest.update({"counts": counts, "schema": {
                **{sp: schemas.describe(schemas.BATCHES) for sp in batching.SPLITS},
                "item_weights": schemas.describe(schemas.ITEM_WEIGHTS)}})
        st.done("batches", out, counts)


def run_sample(spark: SparkSession, cfg, *, graph: str | None = None,
               neighbors_from: str | None = None, training: bool = True) -> SampleResult:
    """Run split -> walks -> pairs -> batches on the graph (``graph``: its version, else the
    latest); publish each stage.

    ``neighbors_from``: reuse that ``neighbors`` version where no change can
    reach (the scheduled refresh); ``training=False`` stops after the walks,
    since pairs and minibatches only feed the trainer.
    """
    with versioned.clear_read_errors():
        return _sample(spark, cfg, graph, neighbors_from, training)


def _sample(spark: SparkSession, cfg, graph_version: str | None, neighbors_from: str | None,
            training: bool, source: tuple[str, str] | None = None) -> SampleResult:
    """``source``: ``(run_dir, split version)`` whose inductive view this run samples."""
    _validate(cfg)
    s, run_dir, seed = cfg.sample, cfg.run_dir, int(cfg.seed)
    nodes, edges, raw = read_graph(spark, run_dir, graph_version)
    graph = GraphManifest.of(raw)
    n_items, n_nodes, bipartite = graph.n_items, graph.n_nodes, graph.bipartite
    st = Stages(run_dir, force=cfg.force, keep=cfg.keep_versions)
    result = st.result
    partitions = s.partitions or 2 * spark.sparkContext.defaultParallelism

    # 1. Evaluation split, before anything sees the edges.
    split = publish_split(spark, cfg, edges, graph, source)
    st.record("split", split.version, split.counts, reused=split.reused)
    split_dir = versioned.check_version(run_dir, "split", result.versions["split"])
    train_edges = spark.read.schema(schemas.EDGES).parquet(str(split_dir / "train_edges"))

    # 2. Random walks -> importance neighbourhoods and hard-negative candidates.
    publish_neighbors(spark, st, s, seed=seed, split_version=result.versions["split"],
                      n_nodes=n_nodes, n_items=n_items, bipartite=bipartite, partitions=partitions,
                      neighbors_from=neighbors_from)
    if not training:
        spark.catalog.clearCache()
        return result
    nb_dir = versioned.check_version(run_dir, "neighbors", result.versions["neighbors"])
    neighbors = spark.read.parquet(str(nb_dir / "neighbors"))
    ranked = neighbors.join(spark.read.parquet(str(nb_dir / "hard_candidates")), "node")

    # 3. Positive pairs and hard negatives.
    _publish_pairs(spark, st, s, seed, train_edges, ranked, bipartite)
    # 4. Minibatches with their K-layer computation graphs.
    _publish_batches(spark, st, cfg, nodes, neighbors, n_items)
    spark.catalog.clearCache()
    if source is None and cfg.split.protocol == new_items.PROTOCOL:
        # The model trains on the inductive view; this run's pairs and minibatches
        # serve the model retrained with the new items (evaluation's upper bound).
        sub = OmegaConf.merge(cfg, {"run_dir": new_items.inductive_dir(run_dir)})
        result.inductive = _sample(spark, sub, graph.version, None, True,
                                   source=(run_dir, result.versions["split"]))
    return result
