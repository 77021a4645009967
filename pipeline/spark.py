"""The one place a SparkSession is built.

Run as ``python jobs/x.py`` the job starts its own local Spark with settings
that suit a laptop or a 2-core CI box. Run under ``spark-submit`` it takes
whatever the submitter configured (master, memory, deploy mode) and only adds
the properties the user put in ``spark.conf``.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

# Spark's own logging, errors only: its start-up notices stay off the console.
LOG4J2 = Path(__file__).resolve().parent / "log4j2.properties"


def under_spark_submit() -> bool:
    """True when this Python driver was launched by spark-submit.

    spark-submit starts the JVM first and hands the Python driver the gateway
    to it through these variables; a plain ``python jobs/x.py`` has neither.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_defaults() -> dict[str, str]:
    """Properties for a self-started local session, sized to this machine."""
    cores = os.cpu_count() or 2
    return {
        "spark.ui.enabled": "false",
        # Stage progress bars for a person at a terminal; none in logs and CI.
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        # Spark's default of 200 shuffle partitions is tuned for clusters; on a
        # few cores it means hundreds of tiny tasks per shuffle.
        "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
        "spark.default.parallelism": str(max(2, 2 * cores)),
        "spark.driver.memory": "4g",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.adaptive.enabled": "true",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}",
    }


def flatten_conf(conf: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Spark property map from Hydra's: ``spark.conf.spark.sql.x=1`` nests by dots."""
    out: dict[str, str] = {}
    for key, value in conf.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_conf(value, f"{name}."))
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def build_spark(master: str = "local[*]", conf: Mapping[str, Any] | None = None,
                app_name: str = "pinsage") -> SparkSession:
    """Return a SparkSession; ``master`` only applies outside spark-submit."""
    conf = flatten_conf(conf or {})
    builder = SparkSession.builder.appName(app_name)
    if under_spark_submit():
        log.info("running under spark-submit; keeping the submitter's master")
    else:
        # Executors must run the same interpreter (and so the same venv).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.master(master)
        for key, value in local_defaults().items():
            if key not in conf:
                builder = builder.config(key, value)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if under_spark_submit():
        spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s, master %s, %d default partitions", spark.version,
             spark.sparkContext.master, spark.sparkContext.defaultParallelism)
    return spark


_ROW_BITS = 33  # monotonically_increasing_id = partition id << 33 | row in partition


def index_rows(df: DataFrame, *order: Column | str, name: str = "_idx") -> DataFrame:
    """Add a dense 0-based index in the given (total) order, without one-partition windows.

    A global sort, then per-partition offsets (a small collect) added to the
    row's position in its partition: all in the JVM, so it scales.
    """
    ranked = (df.orderBy(*order).withColumn("_mono", F.monotonically_increasing_id())
              .withColumn("_part", F.shiftright("_mono", _ROW_BITS)).persist())
    counts = ranked.groupBy("_part").count().orderBy("_part").collect()
    offsets, total = [], 0
    for row in counts:
        offsets.append((row["_part"], total))
        total += row["count"]
    starts = df.sparkSession.createDataFrame(offsets, "_part long, _start long")
    row_in_part = F.col("_mono").bitwiseAND(F.lit((1 << _ROW_BITS) - 1))
    return (ranked.join(F.broadcast(starts), "_part")
            .withColumn(name, F.col("_start") + row_in_part)
            .drop("_part", "_start", "_mono"))
