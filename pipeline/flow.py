"""The all-stages run (``jobs/pipeline.py``): ingest → split and sample → train → infer → evaluate.

Each stage is handed the versions its inputs were just published as, so a
stage never picks up a version another process published meanwhile; only a
single job run from the command line reads ``_LATEST``. Between stages the
console gets a short summary of what each published (or reused).
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from pipeline.evaluate.run import EvalResult, print_summary, run_evaluate
from pipeline.infer import InferResult, run_infer
from pipeline.ingest import run_ingest
from pipeline.sampling import SampleResult, run_sample
from pipeline.train.trainer import TrainResult, run_train, training_inputs


def run_all(spark: SparkSession, cfg) -> EvalResult:
    """Every stage in order, each on its inputs' explicit versions; prints each summary."""
    ingest = run_ingest(spark, cfg)
    _print_ingest(ingest)
    sample = run_sample(spark, cfg, graph=ingest.version)
    _print_sample(cfg, sample)
    train = run_train(cfg, inputs=training_inputs(ingest.version, sample))
    _print_train(cfg, train)
    infer = run_infer(spark, cfg, inputs={"model": train.version, "graph": ingest.version,
                                          "neighbors": sample.versions["neighbors"]})
    _print_infer(infer)
    result = run_evaluate(cfg, split=sample.versions["split"], embeddings=infer.version)
    print_summary(result)
    return result


def _status(version: str, reused: bool) -> str:
    return f"{version}{' (reused)' if reused else ''}"


def _print_ingest(ingest) -> None:
    c = ingest.counts
    print(f"\ningest   graph/{_status(ingest.version, ingest.reused)}")
    print(f"  nodes: {c['nodes_out']:,} "
          f"({', '.join(f'{n:,} {t}s' for t, n in sorted(c['nodes'].items()))})")
    print(f"  edges: {c['edges_out']:,} (from {c['edge_rows_in']:,} rows; "
          f"{c['duplicate_edges_merged']:,} duplicates merged, {c['self_loops_dropped']:,} "
          f"self-loops dropped, {c['edge_rows_quarantined']:,} quarantined)")
    print(f"  item features: {c['feature_dim']} dims")


def _print_sample(cfg, sample: SampleResult) -> None:
    v, k = sample.versions, sample.counts
    print(f"\nsample   split/{_status(v['split'], 'split' in sample.reused)}")
    print(f"  {cfg.split.protocol}: {k['split']['train_edges']:,} training edges, "
          f"{k['split']['validation']:,} validation and {k['split']['test']:,} test "
          f"interactions held out")
    n = k["neighbors"]
    print(f"         neighbors/{_status(v['neighbors'], 'neighbors' in sample.reused)}")
    print(f"  {n['items']:,} items, {n['avg_neighbors']} neighbours on average, "
          f"{n['empty_neighborhoods']} empty, {n['pushes']:,} edge pushes ({n['mode']} mode, "
          f"{n['seconds']} s)")
    print(f"         pairs/{_status(v['pairs'], 'pairs' in sample.reused)}")
    print(f"  {k['pairs']['pairs']:,} positive pairs, {k['pairs']['avg_hard_candidates']} "
          f"hard-negative candidates per query")
    print(f"         batches/{_status(v['batches'], 'batches' in sample.reused)}")
    print(f"  {k['batches']['train_batches']} training and {k['batches']['validation_batches']} "
          f"validation minibatches of {cfg.sample.batch_size}, {k['batches']['num_layers']} "
          f"layers")
    if sample.inductive is not None:
        iv, ik = sample.inductive.versions, sample.inductive.counts
        print(f"  new_items: {k['split'].get('new_items', 0):,} new items; the model trains on "
              f"the inductive view: split/{iv['split']} ({ik['split']['train_edges']:,} edges), "
              f"{ik['pairs']['pairs']:,} pairs, {ik['batches']['train_batches']} minibatches")


def _print_train(cfg, train: TrainResult) -> None:
    kv = cfg.train.val_k
    print(f"\ntrain    model/{_status(train.version, train.reused)}")
    for r in train.history:
        hard = f"{r['loss_hard']:.4f}" if r["loss_hard"] is not None else "  -   "
        print(f"  epoch {r['epoch']}: loss {r['loss']:.4f} (easy {r['loss_easy']:.4f}, hard "
              f"{hard}, {r['hard_negatives']} hard/query), val hit-rate@{kv} "
              f"{r[f'val_hit_rate@{kv}']:.4f}, {r['queries_per_second']:,.0f} queries/s")
    if train.history:
        print(f"  popularity baseline: val hit-rate@{kv} "
              f"{train.history[-1][f'val_popularity_hit_rate@{kv}']:.4f}")
    if train.bias_scale:
        print(f"  item bias: scale {train.bias_scale['chosen']:g} chosen on validation (val MRR "
              + ", ".join(f"{s}: {m:.4f}" for s, m in train.bias_scale["val_mrr"].items()) + ")")


def _print_infer(infer: InferResult) -> None:
    c = infer.counts
    print(f"\ninfer    embeddings/{_status(infer.version, infer.reused)}")
    print(f"  {c['items']:,} items, {c['empty_neighborhoods']} without neighbours, "
          f"{c['unseen_items']} unseen by the model, {c['seconds']} s")
