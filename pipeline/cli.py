"""What every job entry script shares: the Spark session and clean errors."""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pyspark.sql import SparkSession

from pipeline.errors import PipelineError
from pipeline.spark import build_spark


def spark_for(cfg: DictConfig, app_name: str) -> SparkSession:
    logging.getLogger("py4j").setLevel(logging.WARNING)
    conf = OmegaConf.to_container(cfg.spark.conf, resolve=True)
    return build_spark(cfg.spark.master, conf, app_name=f"pinsage-{app_name}")


def job(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Wrap a job body: any error becomes one line on stderr and exit code 2.

    Goes under ``@hydra.main`` (Hydra would otherwise print a traceback). A
    :class:`PipelineError` is a problem with the input and says what to do;
    anything else (a corrupt file a reader did not anticipate, a bug) is
    named by its type and message, with the traceback in the run's log file
    (``HYDRA_FULL_ERROR=1`` raises it instead). Stages publish only on
    success, so either way the previous versions stay as they were.
    """
    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> None:
        _console_verbosity()
        try:
            fn(cfg)
        except PipelineError as e:
            logging.getLogger("pipeline").error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            logs = _log_to_files(f"{type(e).__name__}: {e}", sys.exc_info())
            where = f"the traceback is in {logs[0]}" if logs else "no log file"
            print(f"error: {Path(sys.argv[0]).stem}: unexpected {type(e).__name__}: {e} "
                  f"(nothing was published; {where}; HYDRA_FULL_ERROR=1 shows it here)",
                  file=sys.stderr)
            sys.exit(2)
    return wrapper


def _console_verbosity() -> None:
    """``hydra.verbose`` brings the log lines the console leaves out (conf/config.yaml) back."""
    if not HydraConfig.initialized() or not HydraConfig.get().verbose:
        return
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.NOTSET)


def _log_to_files(msg: str, exc_info) -> list[str]:
    """Log an error with its traceback to the root logger's files only (not the console)."""
    logger = logging.getLogger("pipeline")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, msg, (), exc_info)
    files = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.FileHandler) and h.baseFilename != os.devnull]
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]
