"""Train PinSage on the latest minibatches and publish the `model` stage.

    python jobs/train.py                                  # after jobs/sample.py
    python jobs/train.py train.epochs=5 model.aggregator=gatv2
    python jobs/train.py train.resume=true                # continue an interrupted run
    torchrun --nproc_per_node=2 jobs/train.py             # DistributedDataParallel
"""
import _paths  # noqa: F401  (must come first)
import hydra

from pipeline import cli
from pipeline.config import Config  # noqa: F401  (registers the schema)
from pipeline.train.trainer import run_train


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@cli.job
def main(cfg) -> None:
    result = run_train(cfg)
    if result.version is None:
        return
    last = result.history[-1] if result.history else {}
    print(f"model/{result.version}{' (reused)' if result.reused else ''}: "
          f"{len(result.history)} epochs, final loss {last.get('loss', float('nan')):.4f}, "
          f"val hit-rate@{cfg.train.val_k} {last.get(f'val_hit_rate@{cfg.train.val_k}', float('nan')):.4f}")


if __name__ == "__main__":
    cli.run(main)
