"""Evaluate the latest embeddings against the baselines; publish the `index` and `eval` stages.

    python jobs/evaluate.py                                  # after jobs/infer.py
    python jobs/evaluate.py eval.kind=validation             # tuning: never look at test
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.evaluate import print_summary, run_evaluate


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    print_summary(run_evaluate(cfg))


if __name__ == "__main__":
    cli.run(main)
