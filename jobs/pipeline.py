"""Run every stage, in order, with the same overrides as the single jobs.

    python jobs/pipeline.py                      # MovieLens-100K end to end
    python jobs/pipeline.py data=edges data.path=... run_dir=runs/mine

Stages: ingest, sample, train, infer, evaluate, each handed the versions its
inputs were just published as (pipeline/flow.py); the run ends with the
evaluation's metrics table (test split, 95% bootstrap CIs).
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.flow import run_all


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    run_all(cli.spark_for(cfg, "pipeline"), cfg)


if __name__ == "__main__":
    cli.run(main)
