"""Inference: every item's embedding, computed bottom-up over the whole graph in Spark.

Layer by layer, never per node: a K-hop tree per item would redo each
neighbour's work up to T^K times, whereas here every node's representation at
layer k is computed exactly once. For k = 1..K:

* **map**: each node's ``h^{k-1}`` gives its message for conv k
  (``PinSageConv.message``; layer 0 is ``PinSage.input_layer``);
* **route**: each message goes, once, to every reduce partition holding a
  node that lists the sender as a neighbour (the sender's *fanout*);
* **reduce**: each partition receives the messages its nodes need and the
  nodes' own rows (``h^{k-1}``, neighbour list); ``PinSageConv.combine``
  aggregates each node's messages, in their list slots, into ``h^k``, and
  the same task computes and routes the next layer's messages; after the
  last one, ``PinSage.output`` (the dense head, then the L2 norm) gives the
  embeddings.

The model is broadcast once and all numeric work runs in ``mapInArrow`` on
Arrow batches through the trainer's own code (:mod:`pipeline.infer.kernels`).
The neighbour lists are joined with the items and their fanout once; after
that the K layers are one Spark job with one shuffle each and no join: what
is shuffled is ``N`` own rows plus one message per (sender, partition that
needs it), at most ``min(in-degree, partitions)`` per sender instead of one
per edge (about 2.8 N instead of 10 N rows for T = 10 on a power-law graph
in 8 partitions). Those rows travel in *parcels*: each task packs the rows
bound for one partition into one Arrow IPC cell, so Spark moves a few large
binary values per task instead of a row per node and message. A failed task
re-reads the previous layer's shuffle output, so it recomputes its own layer
only.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.infer import incremental, kernels
from pipeline.io import schemas, versioned
from pipeline.io.embeddings import STAGE, TABLE
from pipeline.io.manifests import GraphManifest, NeighborsManifest
from pipeline.io.stage import Stage
from pipeline.model import spec_value
from pipeline.train.trainer import STAGE as MODEL_STAGE
from pipeline.train.trainer import load_model

log = logging.getLogger(__name__)

EMBEDDING_SCHEMA = "node long, id string, embedding array<float>, query array<float>"
# Bound on reduce rows (own h + at most one message per neighbour) per partition
# when infer.partitions=0: a reduce task holds its whole partition, a few hundred MB.
REDUCE_ROWS_PER_PARTITION = 2_000_000
# Model fields that must match the configuration the user asks for.
MODEL_FIELDS = ("num_layers", "hidden_dim", "aggregator", "id_embedding", "head_layers",
                "item_bias", "query_offsets")


@dataclass
class InferResult:
    version: str
    reused: bool
    counts: dict = field(default_factory=dict)


def _validate(cfg) -> None:
    config.check(cfg, "infer", "model")


def check_compatible(spec: dict, cfg_model, feature_dim: int, num_neighbors: int) -> None:
    """The published model must fit the configuration, the graph's features and the neighbours."""
    for name in MODEL_FIELDS:
        trained = spec_value(spec, name)
        if str(trained) != str(cfg_model[name]):
            raise PipelineError(f"the latest model was trained with model.{name}={trained} "
                                f"but the config says model.{name}={cfg_model[name]}; "
                                f"run jobs/train.py with this config or drop the override")
    if spec["feature_dim"] != feature_dim:
        raise PipelineError(f"the model was trained on {spec['feature_dim']} item features "
                            f"but the graph has {feature_dim}")
    if spec["num_neighbors"] != num_neighbors:
        raise PipelineError(f"the model was trained with T={spec['num_neighbors']} neighbours "
                            f"but the neighbors stage has T={num_neighbors}; re-run "
                            f"jobs/sample.py with sample.num_neighbors={spec['num_neighbors']}")


def part_of(node: str, partitions: int):
    """The reduce partition of a node: Spark's hash partition, as ``repartition`` computes it."""
    return F.pmod(F.hash(node), F.lit(partitions))


def fanout(neighbors: DataFrame, partitions: int) -> DataFrame:
    """``(node, fanout)``: for each listed neighbour, the partitions of the nodes listing it.

    A popular neighbour thus ships its message at most ``partitions`` times,
    not once per edge.
    """
    pairs = neighbors.select(F.explode("neighbors").alias("nbr"),
                             part_of("node", partitions).alias("part"))
    # One shuffle by nbr serves both the distinct and the grouping.
    return (pairs.repartition("nbr").distinct().groupBy("nbr")
            .agg(F.sort_array(F.collect_list("part")).alias("fanout"))
            .select(F.col("nbr").alias("node"), "fanout"))


def partition_keys(spark: SparkSession, partitions: int) -> np.ndarray:
    """``keys[p]``: a value that ``repartition(partitions, key)`` sends to partition ``p``."""
    for span in (64, 4096):
        found = dict(spark.range(span * partitions)
                     .select(part_of("id", partitions).alias("p"), "id").groupBy("p")
                     .agg(F.min("id")).collect())
        if len(found) == partitions:
            return np.array([found[p] for p in range(partitions)], dtype=np.int64)
    raise PipelineError(f"no key found for each of {partitions} partitions")


@contextmanager
def _session_conf(spark: SparkSession, conf: dict[str, str]):
    """Set session properties for the duration of the block, then restore them."""
    old = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def _write_embeddings(df: DataFrame, path: str) -> None:
    # Distinct floats: a dictionary page per column chunk is pure overhead.
    (schemas.conform(df, schemas.EMBEDDINGS, TABLE).write
     .option("parquet.enable.dictionary", "false").parquet(path))


def _input_fn(blob, num_neighbors: int, dtype_name: str, keys: np.ndarray):
    def run(batches):
        model = kernels.model_of(blob.value)
        yield from kernels.input_layer(model, batches, num_neighbors=num_neighbors,
                                       message_dtype=kernels.MESSAGE_DTYPES[dtype_name],
                                       keys=keys)
    return run


def _reduce_fn(blob, k: int, num_neighbors: int, dtype_name: str, keys: np.ndarray,
               batch_rows: int):
    def run(batches):
        model = kernels.model_of(blob.value)
        yield from kernels.reduce_layer(model, k, batches, num_neighbors=num_neighbors,
                                        message_dtype=kernels.MESSAGE_DTYPES[dtype_name],
                                        keys=keys, batch_rows=batch_rows)
    return run


def layers(items: DataFrame, neighbors: DataFrame, blob, *, num_layers: int, num_neighbors: int,
           partitions: int, message_dtype: str, batch_rows: int,
           depth: DataFrame | None = None) -> DataFrame:
    """The embeddings (``EMBEDDING_SCHEMA``) of ``items``, as one lazy Spark plan.

    ``items``: ``(node, id, features)``; ``neighbors``: ``schemas.NEIGHBORS``.
    ``depth`` (``node, depth``): compute only these items, each up to
    ``depth`` convolutions, and embed those with ``depth = K``
    (:mod:`pipeline.infer.incremental`).
    """
    K, T = num_layers, num_neighbors
    if depth is None:
        items = items.withColumn("depth", F.lit(K))
    else:
        items = items.join(depth, "node")
        neighbors = neighbors.join(depth.where(F.col("depth") >= 1), "node", "left_semi")
    keys = partition_keys(items.sparkSession, partitions)
    if K == 0:
        return items.mapInArrow(_input_fn(blob, T, message_dtype, keys), EMBEDDING_SCHEMA)
    # Hash joins: the sides need no sort.
    start = (items.withColumn("part", part_of("node", partitions))
             .join(neighbors.select("node", "neighbors", "weights").hint("shuffle_hash"),
                   "node", "left")
             .join(fanout(neighbors, partitions).hint("shuffle_hash"), "node", "left"))
    step = start.mapInArrow(_input_fn(blob, T, message_dtype, keys), kernels.PARCEL_SCHEMA)
    for k in range(K):
        step = step.repartition(partitions, "key").mapInArrow(
            _reduce_fn(blob, k, T, message_dtype, keys, batch_rows),
            EMBEDDING_SCHEMA if k == K - 1 else kernels.PARCEL_SCHEMA)
    return step


def embed(spark: SparkSession, items: DataFrame, neighbors: DataFrame, model, spec: dict, *,
          out_path: str, partitions: int, message_dtype: str, batch_rows: int,
          depth: DataFrame | None = None) -> None:
    """Write the embeddings of :func:`layers` (``schemas.EMBEDDINGS``) to ``out_path``."""
    blob = spark.sparkContext.broadcast(kernels.ModelBlob.of(model, spec))
    try:
        _write_embeddings(layers(items, neighbors, blob, num_layers=model.num_layers,
                                 num_neighbors=int(spec["num_neighbors"]), partitions=partitions,
                                 message_dtype=message_dtype, batch_rows=batch_rows,
                                 depth=depth), out_path)
    finally:
        blob.unpersist()


def _embed_changed(spark: SparkSession, run_dir: str, plan: incremental.Plan, items: DataFrame,
                   neighbors: DataFrame, model, spec: dict, *, scratch: str, out_path: str,
                   partitions: int, message_dtype: str, batch_rows: int) -> None:
    """Embed the plan's affected items (to ``scratch``); copy the rest from the previous version."""
    prev_dir = versioned.check_version(run_dir, STAGE, plan.previous)
    kept = spark.read.parquet(str(prev_dir / TABLE)).select("node", "embedding", "query")
    if plan.recomputed:
        embed(spark, items, neighbors, model, spec, out_path=scratch, partitions=partitions,
              message_dtype=message_dtype, batch_rows=batch_rows, depth=plan.depth)
        fresh = spark.read.parquet(scratch)
        kept = kept.join(fresh.select("node"), "node", "left_anti")
    columns = ("node", "id", "embedding", "query")
    merged = kept.join(items.select("node", "id"), "node").select(*columns)
    if plan.recomputed:
        merged = merged.unionByName(fresh.select(*columns))
    _write_embeddings(merged, out_path)


def _read_inputs(spark: SparkSession, cfg, inputs: dict[str, str], spec: dict
                 ) -> tuple[DataFrame, DataFrame, dict[str, int]]:
    """The graph's items and the neighbour lists, checked against the model: ``(items,
    neighbors, counts)`` with the numbers of items, of items with neighbours and of
    items the model never saw."""
    run_dir = cfg.run_dir
    graph_dir = versioned.resolve(run_dir, "graph", inputs["graph"])
    nb_dir = versioned.resolve(run_dir, "neighbors", inputs["neighbors"])
    check_compatible(spec, cfg.model, GraphManifest.read(run_dir, inputs["graph"]).feature_dim,
                     NeighborsManifest.read(run_dir, inputs["neighbors"]).num_neighbors)

    items = (spark.read.schema(schemas.NODES).parquet(str(graph_dir / "nodes"))
             .where(F.col("type") == schemas.ITEM).select("node", "id", "features"))
    neighbors = schemas.conform(spark.read.parquet(str(nb_dir / "neighbors")),
                                schemas.NEIGHBORS, "neighbors")
    stats = items.agg(F.count(F.lit(1)).alias("items"),
                      F.sum((F.col("node") >= spec["num_items"]).cast("long")).alias("unseen"),
                      F.min(F.size("features")).alias("min_dim"),
                      F.max(F.size("features")).alias("max_dim")).first()
    if not stats["items"]:
        raise PipelineError(f"graph/{inputs['graph']} has no items to embed")
    if stats["min_dim"] != stats["max_dim"] or stats["max_dim"] != spec["feature_dim"]:
        raise PipelineError(f"items have {stats['min_dim']} to {stats['max_dim']} features, "
                            f"the model expects {spec['feature_dim']}")
    with_nbrs = (items.select("node").join(neighbors.where(F.size("neighbors") > 0)
                                           .select("node"), "node", "left_semi").count())
    return items, neighbors, {"items": int(stats["items"]), "with_neighbors": with_nbrs,
                              "unseen": int(stats["unseen"] or 0)}


def _partitions(spark: SparkSession, computed: int, num_neighbors: int) -> int:
    """Few partitions (a message is shipped once per partition that needs it), each
    holding at most ``REDUCE_ROWS_PER_PARTITION`` reduce rows."""
    return max(spark.sparkContext.defaultParallelism,
               math.ceil(computed * (num_neighbors + 1) / REDUCE_ROWS_PER_PARTITION))


def _reuse_counts(plan: incremental.Plan | None, n_items: int, why: str) -> dict:
    """The manifest's account of what an incremental plan recomputed and reused."""
    return {"recomputed_items": n_items if plan is None else plan.recomputed,
            "reused_items": 0 if plan is None else plan.reused,
            "reused_from": None if plan is None else plan.previous,
            "changed_items": None if plan is None else plan.changed_items,
            "not_reused_because": why or None}


def run_infer(spark: SparkSession, cfg, *, inputs: dict[str, str] | None = None,
              embeddings_from: str | None = None) -> InferResult:
    """Embed every item of the graph with the model; publish ``embeddings``. ``inputs``: the
    model, neighbors and graph versions (the latest where not given). ``embeddings_from``: a
    previous version whose rows are reused for every item whose receptive field did not
    change (:mod:`pipeline.infer.incremental`); the table equals a full run's."""
    _validate(cfg)
    i, run_dir = cfg.infer, cfg.run_dir
    inputs = versioned.latest_inputs(run_dir, (MODEL_STAGE, "neighbors", "graph"), "inference",
                                     inputs)
    params = {"message_dtype": i.message_dtype}
    stage = Stage(run_dir, STAGE, inputs, params, keep=cfg.keep_versions, force=cfg.force)
    if found := stage.reusable():
        return InferResult(found, True, stage.manifest(found)["counts"])

    t0 = time.perf_counter()
    model, model_manifest = load_model(run_dir, inputs[MODEL_STAGE])
    spec = model_manifest.spec
    items, neighbors, stats = _read_inputs(spark, cfg, inputs, spec)
    n_items, T = stats["items"], int(spec["num_neighbors"])
    plan, why = (incremental.plan(spark, run_dir, embeddings_from, inputs, params,
                                  stage.code_hashes, items, neighbors,
                                  n_items=n_items, num_layers=model.num_layers)
                 if embeddings_from else (None, ""))
    if why:
        log.info("embedding every item: cannot reuse embeddings/%s: %s", embeddings_from, why)
    computed = n_items if plan is None else plan.computed
    partitions = i.partitions or _partitions(spark, computed, T)
    log.info("embedding %d items with model/%s (%d layers, %s) in %d partitions",
             n_items if plan is None else plan.recomputed, inputs[MODEL_STAGE], model.num_layers,
             spec["aggregator"], partitions)

    with stage.publish() as out:
        scratch = out.path / "_recomputed"
        options = dict(partitions=partitions, message_dtype=i.message_dtype,
                       batch_rows=i.batch_rows)
        with _session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch":
                                   str(i.batch_rows)}):
            if plan is None:
                embed(spark, items, neighbors, model, spec, out_path=out.table_path(TABLE),
                      **options)
            else:
                _embed_changed(spark, run_dir, plan, items, neighbors, model, spec,
                               scratch=str(scratch), out_path=out.table_path(TABLE), **options)
        shutil.rmtree(scratch, ignore_errors=True)
        total = time.perf_counter() - t0
        counts = {"items": n_items, "empty_neighborhoods": n_items - stats["with_neighbors"],
                  "unseen_items": stats["unseen"], "num_layers": model.num_layers,
                  "dim": spec["hidden_dim"], "partitions": partitions,
                  "message_dtype": i.message_dtype, **_reuse_counts(plan, n_items, why),
                  "computed_items": computed,
                  "seconds": round(total, 2), "items_per_second": round(n_items / total)}
        out.manifest.update({"counts": counts,
                             "schema": {TABLE: schemas.describe(schemas.EMBEDDINGS)}})
    log.info("embeddings: %d items in %.1fs (%d re-embedded, %d with no neighbours, %d unseen by "
             "the model)", n_items, total, counts["recomputed_items"],
             counts["empty_neighborhoods"], counts["unseen_items"])
    return InferResult(out.version, False, counts)


__all__ = ["InferResult", "check_compatible", "embed", "fanout", "layers", "run_infer"]
