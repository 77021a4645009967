"""Ingest a source graph and publish the `graph` stage.

    python jobs/ingest.py                       # MovieLens-100K
    python jobs/ingest.py data=edges data.path=edges.csv data.src_col=user data.dst_col=item
    spark-submit --py-files pipeline.zip jobs/ingest.py data=edges data.path=...
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.ingest import run_ingest


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    spark = cli.spark_for(cfg, "ingest")
    result = run_ingest(spark, cfg)
    c = result.counts
    print(f"graph/{result.version}{' (unchanged, reused)' if result.reused else ''}: "
          f"{c['nodes_out']} nodes {c['nodes']}, {c['edges_out']} edges, "
          f"{c['edge_rows_quarantined']} rows quarantined -> {result.path}")


if __name__ == "__main__":
    cli.run(main)
