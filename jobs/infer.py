"""Embed every item of the latest graph with the latest model; publish the `embeddings` stage.

    python jobs/infer.py                               # after jobs/train.py
    python jobs/infer.py infer.message_dtype=bfloat16  # half the shuffle, approximate
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.infer import run_infer


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    spark = cli.spark_for(cfg, "infer")
    result = run_infer(spark, cfg)
    c = result.counts
    print(f"embeddings/{result.version}{' (reused)' if result.reused else ''}: {c['items']} items "
          f"({c['recomputed_items']} re-embedded), {c['empty_neighborhoods']} without neighbours, "
          f"{c['unseen_items']} unseen by the model, {c['seconds']}s in {c['partitions']} partitions")


if __name__ == "__main__":
    cli.run(main)
