"""What every job entry script shares: the Spark session and clean errors."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from omegaconf import DictConfig, OmegaConf
from pyspark.sql import SparkSession

from pipeline.errors import PipelineError
from pipeline.spark import build_spark


def spark_for(cfg: DictConfig, app_name: str) -> SparkSession:
    logging.getLogger("py4j").setLevel(logging.WARNING)
    conf = OmegaConf.to_container(cfg.spark.conf, resolve=True)
    return build_spark(cfg.spark.master, conf, app_name=f"pinsage-{app_name}")


def job(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Wrap a job body: a :class:`PipelineError` becomes one line and exit code 2.

    Goes under ``@hydra.main`` (Hydra would otherwise print a traceback for
    what is a problem with the user's input, not a bug).
    """
    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> None:
        try:
            fn(cfg)
        except PipelineError as e:
            logging.getLogger("pipeline").error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapper
