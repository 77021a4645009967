"""Run every stage that exists, in order, with the same overrides as the single jobs.

    python jobs/pipeline.py                      # MovieLens-100K end to end
    python jobs/pipeline.py data=edges data.path=... run_dir=runs/mine

Stages: ingest, sample, train, infer, evaluate; the run ends with the
evaluation's metrics table (test split, 95% bootstrap CIs).
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.evaluate import print_summary, run_evaluate
from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.sampling import run_sample
from pipeline.train.trainer import run_train


def _status(version: str, reused: bool) -> str:
    return f"{version}{' (reused)' if reused else ''}"


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    spark = cli.spark_for(cfg, "pipeline")
    ingest = run_ingest(spark, cfg)
    c = ingest.counts
    print(f"\ningest   graph/{_status(ingest.version, ingest.reused)}")
    print(f"  nodes: {c['nodes_out']:,} ({', '.join(f'{n:,} {t}s' for t, n in sorted(c['nodes'].items()))})")
    print(f"  edges: {c['edges_out']:,} (from {c['edge_rows_in']:,} rows; "
          f"{c['duplicate_edges_merged']:,} duplicates merged, {c['self_loops_dropped']:,} self-loops "
          f"dropped, {c['edge_rows_quarantined']:,} quarantined)")
    print(f"  item features: {c['feature_dim']} dims")

    sample = run_sample(spark, cfg)
    v, k = sample.versions, sample.counts
    print(f"\nsample   split/{_status(v['split'], 'split' in sample.reused)}")
    print(f"  {cfg.eval.protocol}: {k['split']['train_edges']:,} training edges, "
          f"{k['split']['validation']:,} validation and {k['split']['test']:,} test interactions held out")
    n = k["neighbors"]
    print(f"         neighbors/{_status(v['neighbors'], 'neighbors' in sample.reused)}")
    print(f"  {n['items']:,} items, {n['avg_neighbors']} neighbours on average, "
          f"{n['empty_neighborhoods']} empty, {n['pushes']:,} edge pushes ({n['mode']} mode, {n['seconds']} s)")
    print(f"         pairs/{_status(v['pairs'], 'pairs' in sample.reused)}")
    print(f"  {k['pairs']['pairs']:,} positive pairs, {k['pairs']['avg_hard_candidates']} hard-negative "
          f"candidates per query")
    print(f"         batches/{_status(v['batches'], 'batches' in sample.reused)}")
    print(f"  {k['batches']['train_batches']} training and {k['batches']['validation_batches']} "
          f"validation minibatches of {cfg.sample.batch_size}, {k['batches']['num_layers']} layers")

    if sample.inductive is not None:
        iv, ik = sample.inductive.versions, sample.inductive.counts
        print(f"  new_items: {k['split'].get('new_items', 0):,} new items; the model trains on the "
              f"inductive view: split/{iv['split']} ({ik['split']['train_edges']:,} edges), "
              f"{ik['pairs']['pairs']:,} pairs, {ik['batches']['train_batches']} minibatches")

    train = run_train(cfg)
    kv = cfg.train.val_k
    print(f"\ntrain    model/{_status(train.version, train.reused)}")
    for r in train.history:
        hard = f"{r['loss_hard']:.4f}" if r["loss_hard"] is not None else "  -   "
        print(f"  epoch {r['epoch']}: loss {r['loss']:.4f} (easy {r['loss_easy']:.4f}, hard {hard}, "
              f"{r['hard_negatives']} hard/query), val hit-rate@{kv} {r[f'val_hit_rate@{kv}']:.4f}, "
              f"{r['queries_per_second']:,.0f} queries/s")
    if train.history:
        print(f"  popularity baseline: val hit-rate@{kv} "
              f"{train.history[-1][f'val_popularity_hit_rate@{kv}']:.4f}")
    if train.bias_scale:
        print(f"  item bias: scale {train.bias_scale['chosen']:g} chosen on validation (val MRR "
              + ", ".join(f"{s}: {m:.4f}" for s, m in train.bias_scale["val_mrr"].items()) + ")")

    infer = run_infer(spark, cfg)
    c = infer.counts
    print(f"\ninfer    embeddings/{_status(infer.version, infer.reused)}")
    print(f"  {c['items']:,} items, {c['empty_neighborhoods']} without neighbours, "
          f"{c['unseen_items']} unseen by the model, {c['seconds']} s")

    print_summary(run_evaluate(cfg))


if __name__ == "__main__":
    main()
