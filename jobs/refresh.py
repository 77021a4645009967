"""The scheduled refresh: ingest -> sample -> infer -> index -> evaluate -> release. For cron.

    python jobs/refresh.py                        # exit 0 only when a new release is published
    python jobs/refresh.py refresh.retrain=true   # train a new model on the way
    python jobs/refresh.py --rollback             # back to the previous release
"""
import sys

import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.refresh import rollback, run_refresh

# `--rollback` is the same as the override refresh.rollback=true.
sys.argv = [("refresh.rollback=true" if a == "--rollback" else a) for a in sys.argv]


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    if cfg.refresh.rollback:
        print(f"release/{rollback(cfg.run_dir)} is current again")
        return
    result = run_refresh(cli.spark_for(cfg, "refresh"), cfg)
    n, e = result.counts["neighbors"], result.counts["embeddings"]
    print(f"release/{result.version}: hit_rate@10 {result.metrics['hit_rate@10']:.4f}, "
          f"neighbourhoods recomputed for {n['recomputed_items']} items "
          f"(reused {n['reused_items']}), embeddings for {e['recomputed_items']} "
          f"(reused {e['reused_items']}), {result.counts['seconds']}s")


if __name__ == "__main__":
    cli.run(main)
