"""The ablation table: each row of ``ablate.rows`` trained beside the run and scored on validation.

    python jobs/ablate.py                               # after jobs/ingest.py (and the split)
    python jobs/ablate.py "+ablate.rows.lr3=['train.lr=0.003']"   # one more row

Rows share the run's graph and split; their stages live in <run_dir>/_ablate/.
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.ablate import print_summary, run_ablate
from pipeline.config import Config  # noqa: F401  (registers the schema)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    print_summary(run_ablate(cli.spark_for(cfg, "ablate"), cfg))


if __name__ == "__main__":
    cli.run(main)
