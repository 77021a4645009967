"""Hold out the evaluation edges of the latest graph (stage ``split``).

    python jobs/split.py                            # after jobs/ingest.py
    python jobs/split.py split.protocol=random_edges split.holdout_fraction=0.2

jobs/sample.py makes (or reuses) the split itself; run this one alone to
check a protocol's held-out counts before sampling.
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.split import run_split


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    result = run_split(cli.spark_for(cfg, "split"), cfg)
    print(f"split/{result.version}{' (reused)' if result.reused else ''}: {result.counts}")


if __name__ == "__main__":
    cli.run(main)
