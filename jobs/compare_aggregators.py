"""Compare the aggregators: one model per aggregator, trained beside the run; publish `compare`.

    python jobs/compare_aggregators.py                        # after jobs/sample.py
    python jobs/compare_aggregators.py "compare.aggregators=[importance,gatv2]"
    python jobs/compare_aggregators.py eval.kind=validation   # tuning: never look at test

Each model trains on the run's split, neighbourhoods and minibatches in
<run_dir>/_compare/aggregator=<name>/; the run's own model is untouched.
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.evaluate.compare import print_summary, run_compare_aggregators


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    print_summary(run_compare_aggregators(cfg))


if __name__ == "__main__":
    cli.run(main)
