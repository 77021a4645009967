"""Sample the latest graph: the split (jobs/split.py) first, then importance neighbourhoods,
pairs, minibatches.

    python jobs/sample.py                           # after jobs/ingest.py
    python jobs/sample.py sample.mode=join sample.push_threshold=0
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.sampling import run_sample


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    spark = cli.spark_for(cfg, "sample")
    result = run_sample(spark, cfg)
    for stage, version in result.versions.items():
        reused = " (reused)" if stage in result.reused else ""
        print(f"{stage}/{version}{reused}: {result.counts[stage]}")


if __name__ == "__main__":
    cli.run(main)
