"""The driver ``tests/test_cluster.py`` spark-submits to watch Spark re-run a killed worker's tasks.

``cluster_rerun_job.py <markers> <result.json>`` runs two one-stage jobs, ``control`` then
``killed`` (the job group of each), over the same rows. Every task writes
``<markers>/<job>/started-<partition>-<attempt>`` and then waits for ``<markers>/<job>/go``,
so the test knows when both one-core executors are inside a task: it only releases
``control``, and kills a worker before releasing ``killed``. Waiting is what makes
the kill land mid-task, whatever the machine's speed. The sums of squares per
partition go to ``result.json``, for the test to check the re-run result is exact.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pyspark import TaskContext
from pyspark.sql import SparkSession

ROWS, PARTITIONS, WAIT_S = 4000, 4, 300


def wait_for_go(markers: Path):
    def task(index, rows):
        (markers / f"started-{index}-{TaskContext.get().attemptNumber()}").touch()
        deadline = time.monotonic() + WAIT_S
        while not (markers / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {markers / 'go'} after {WAIT_S} s")
            time.sleep(0.05)
        yield index, sum(x * x for x in rows)
    return task


def main(markers: Path, result: Path) -> None:
    spark = SparkSession.builder.appName("rerun-after-worker-kill").getOrCreate()
    sc = spark.sparkContext
    out = {}
    for job in ("control", "killed"):
        (markers / job).mkdir(parents=True, exist_ok=True)
        sc.setJobGroup(job, job)
        rdd = sc.parallelize(range(ROWS), PARTITIONS)
        out[job] = sorted(rdd.mapPartitionsWithIndex(wait_for_go(markers / job)).collect())
    result.write_text(json.dumps(out))
    spark.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
