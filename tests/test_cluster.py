"""A real Spark standalone cluster on 127.0.0.1: jobs under spark-submit equal local mode.

Starts a master and two one-core workers from the pyspark package, ships the
``pipeline`` package as README.md's "On a cluster" shows (``--py-files
pipeline.zip``), runs ingest, sample and infer with ``spark-submit``, kills one
worker while sampling runs (Spark reruns its tasks on the other: asserted from
the job's event log) and compares
every table with the same stages run in local mode. The cluster's processes
are stopped whatever happens.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyspark
import pytest
from pyspark.testing import assertDataFrameEqual

from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.io.embeddings import read_embeddings
from pipeline.sampling import run_sample
from pipeline.train.trainer import run_train

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
SPARK_BIN = Path(pyspark.__file__).parent / "bin"
SMALL = ("sample.batch_size=64", "sample.easy_negatives=40",
         "train.epochs=1", "train.easy_negatives=40", "model.hidden_dim=16",
         "infer.partitions=4", "sample.partitions=4")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, work: Path):
        self.work, self.procs = work, {}
        self.port, self.ui = _port(), _port()
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(SPARK_BIN.parent),
                    "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                    "SPARK_LOG_DIR": str(work / "logs"), "SPARK_WORKER_DIR": str(work / "workers")}

    def _start(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([str(SPARK_BIN / "spark-class"), *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def start(self, workers: int = 2) -> None:
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui))
        for i in range(workers):
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                        "--cores", "1", "--memory", "1g", "--webui-port", str(_port()), self.url)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/json", timeout=2))
                if sum(w["state"] == "ALIVE" for w in state["workers"]) == workers:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the cluster did not start; logs in {self.work}")

    def kill(self, name: str) -> None:
        """SIGKILL a process group (the worker JVM and the executors it started)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def submit(self, job: str, *overrides: str, during=None, conf: dict | None = None) -> str:
        extra = [a for k, v in (conf or {}).items() for a in ("--conf", f"{k}={v}")]
        cmd = [str(SPARK_BIN / "spark-submit"), "--master", self.url, *extra,
               "--py-files", str(self.work / "pipeline.zip"),
               "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
               "--conf", "spark.cores.max=2", "--conf", "spark.driver.memory=1g",
               "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.default.parallelism=4",
               "--conf", "spark.ui.enabled=false", "--conf", "spark.task.maxFailures=8",
               f"jobs/{job}.py", *overrides]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            if during is not None:
                during(proc)
            out, _ = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0, f"{job} failed under spark-submit:\n{out[-4000:]}"
        return out


@pytest.fixture
def cluster(tmp_path):
    work = tmp_path / "cluster"
    work.mkdir()
    with zipfile.ZipFile(work / "pipeline.zip", "w") as z:   # zip -qr pipeline.zip pipeline
        for f in sorted((ROOT / "pipeline").rglob("*.py")):
            z.write(f, f.relative_to(ROOT))
    c = Cluster(work)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _assert_tasks_were_rerun(events: Path) -> None:
    """The event log shows the killed worker's executor removed and tasks run again: a task
    (stage, partition) that ended more than once (lost with its executor and retried, or a
    map stage resubmitted because its shuffle output was lost with it)."""
    # One file (app-…), or a directory of rolled files (eventlog_v2_…/events_<n>_…).
    logs = sorted(p for p in events.rglob("*")
                  if p.is_file() and not p.name.startswith(("appstatus", ".")))     # .crc
    assert logs, f"no event log under {events}"
    records = [json.loads(line) for log in logs for line in log.read_text().splitlines()
               if line.strip()]
    removed = [e for e in records if e["Event"] == "SparkListenerExecutorRemoved"]
    ends = [e for e in records if e["Event"] == "SparkListenerTaskEnd"]
    runs = Counter((e["Stage ID"], e["Task Info"]["Index"]) for e in ends)
    rerun = sorted(k for k, n in runs.items() if n > 1)
    failed = [e["Task End Reason"]["Reason"] for e in ends
              if e["Task End Reason"]["Reason"] != "Success"]
    attempts = {e["Stage Info"]["Stage Attempt ID"] for e in records
                if e["Event"] == "SparkListenerStageSubmitted"}
    assert removed, "the event log records no executor removed"
    assert rerun and (failed or max(attempts) > 0), (
        f"no task was re-run after the worker was killed (failed {failed}, stage attempts "
        f"{sorted(attempts)})")


def test_cluster_equals_local_mode(spark, make_cfg, tmp_path, cluster):
    src = tmp_path / "e.csv"
    rnd = np.random.default_rng(0)
    src.write_text("u,i,t\n" + "".join(f"u{c}_{u},i{c}_{i},{c * 100 + u * 10 + k}\n"
                                       for c in range(10) for u in range(6)
                                       for k, i in enumerate(rnd.choice(12, 4, replace=False))))
    data = ("data=edges", f"data.path={src}", "data.src_col=u", "data.dst_col=i", "data.time_col=t")
    local = make_cfg(*data, *SMALL)
    run_ingest(spark, local)
    run_sample(spark, local)
    run_train(local)
    run_infer(spark, local)

    remote = tmp_path / "remote"
    # Same model for both: inference is what is compared, not training.
    model = versioned.resolve(local.run_dir, "model")
    shutil.copytree(model, remote / "model" / model.name)
    (remote / "model" / "_LATEST").write_text(model.name + "\n")
    over = (*data, *SMALL, f"run_dir={remote}")
    cluster.submit("ingest", *over)

    def kill_a_worker_mid_walk(proc):
        nb = remote / "neighbors"
        while proc.poll() is None and not (nb.is_dir() and any(
                p.name.startswith("_tmp-") for p in nb.iterdir())):
            time.sleep(0.05)
        cluster.kill("worker1")
    events = tmp_path / "events"
    events.mkdir()
    cluster.submit("sample", *over, during=kill_a_worker_mid_walk,
                   conf={"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
                         "spark.eventLog.compress": "false"})
    _assert_tasks_were_rerun(events)
    cluster.submit("infer", *over)

    for stage, tables in (("graph", ("nodes", "edges")), ("split", ("train_edges", "holdout")),
                          ("neighbors", ("neighbors", "hard_candidates")),
                          ("pairs", ("pairs", "hard_negatives")), ("batches", ("train", "validation"))):
        for t in tables:
            a = spark.read.parquet(str(versioned.resolve(local.run_dir, stage) / t))
            b = spark.read.parquet(str(versioned.resolve(remote, stage) / t))
            assertDataFrameEqual(a, b, checkRowOrder=False)
    ea, eb = read_embeddings(local.run_dir), read_embeddings(remote)
    assert np.array_equal(ea.node, eb.node) and ea.id == eb.id
    np.testing.assert_allclose(ea.matrix, eb.matrix, rtol=0, atol=1e-6)
