"""Run every stage that exists, in order, with the same overrides as the single jobs.

    python jobs/pipeline.py                      # MovieLens-100K end to end
    python jobs/pipeline.py data=edges data.path=... run_dir=runs/mine

Stages so far: ingest. Sampling, training, inference and evaluation join as
they are built.
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.ingest import run_ingest


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    spark = cli.spark_for(cfg, "pipeline")
    result = run_ingest(spark, cfg)
    c = result.counts
    print(f"\ningest: graph/{result.version}{' (reused)' if result.reused else ''}")
    print(f"  nodes: {c['nodes_out']:,} ({', '.join(f'{n:,} {t}s' for t, n in sorted(c['nodes'].items()))})")
    print(f"  edges: {c['edges_out']:,} (from {c['edge_rows_in']:,} rows; "
          f"{c['duplicate_edges_merged']:,} duplicates merged, {c['self_loops_dropped']:,} self-loops "
          f"dropped, {c['edge_rows_quarantined']:,} quarantined)")
    print(f"  item features: {c['feature_dim']} dims")


if __name__ == "__main__":
    main()
