"""A real Spark standalone cluster on 127.0.0.1: Spark re-runs a killed worker's tasks.

Starts a master and two one-core workers from the pyspark package (stopped
whatever happens) and SIGKILLs one of them while its executor runs a task.

* ``test_killed_worker_tasks_rerun`` (runs in CI, about a minute): a one-stage job
  whose tasks wait for a marker file (``tests/cluster_rerun_job.py``), so the kill
  lands while both executors are inside a task; the event log must show the killed
  executor's task lost and run again on the other, the same stage without a kill
  must show no re-run, and both sums must be exact.
* ``test_cluster_equals_local_mode`` (marker ``cluster``, ``make test-cluster``):
  ships the ``pipeline`` package as README.md's "On a cluster" shows (``--py-files
  pipeline.zip``), runs ingest, sample and infer with ``spark-submit``, kills a
  worker while sampling runs (re-runs asserted from the event log) and compares
  every table with the same stages run in local mode.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pyspark.testing import assertDataFrameEqual

from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.io.embeddings import read_embeddings
from pipeline.sampling import run_sample
from pipeline.standalone import SPARK_BIN, StandaloneCluster, free_port, get_json
from pipeline.train.trainer import run_train

ROOT = Path(__file__).resolve().parent.parent
SMALL = ("sample.batch_size=64", "sample.easy_negatives=40",
         "train.epochs=1", "train.easy_negatives=40", "model.hidden_dim=16",
         "infer.partitions=4", "sample.partitions=4")


class Cluster(StandaloneCluster):
    """The standalone cluster, with spark-submit as the tests run it."""

    def submit(self, script: str, *args: str, during=None, conf: dict | None = None,
               py_files: Path | None = None) -> str:
        """spark-submit ``script``; ``during(proc)`` runs while it does. Its output goes to a
        file, not a pipe: Spark's INFO lines would fill a pipe nobody reads until the end."""
        extra = [a for k, v in (conf or {}).items() for a in ("--conf", f"{k}={v}")]
        if py_files is not None:
            extra += ["--py-files", str(py_files)]
        cmd = [str(SPARK_BIN / "spark-submit"), "--master", self.url, *extra,
               "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
               "--conf", "spark.cores.max=2", "--conf", "spark.driver.memory=1g",
               "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.default.parallelism=4",
               "--conf", "spark.task.maxFailures=8", script, *args]
        if not any(k == "spark.ui.enabled" for k in conf or {}):
            cmd[1:1] = ["--conf", "spark.ui.enabled=false"]
        log = self.work / f"{Path(script).stem}.out"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                if during is not None:
                    during(proc)
                proc.wait(timeout=400)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text()
        assert proc.returncode == 0, f"{script} failed under spark-submit:\n{text[-4000:]}"
        return text


@pytest.fixture
def cluster(tmp_path):
    work = tmp_path / "cluster"
    work.mkdir()
    c = Cluster(work)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _zip_pipeline(work: Path) -> Path:
    """``zip -qr pipeline.zip pipeline``: what README.md ships to executors."""
    path = work / "pipeline.zip"
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted((ROOT / "pipeline").rglob("*.py")):
            z.write(f, f.relative_to(ROOT))
    return path


def _event_log(events: Path) -> list[dict]:
    # One file (app-…), or a directory of rolled files (eventlog_v2_…/events_<n>_…).
    logs = sorted(p for p in events.rglob("*")
                  if p.is_file() and not p.name.startswith(("appstatus", ".")))     # .crc
    assert logs, f"no event log under {events}"
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()
            if line.strip()]


def _task_runs(records: list[dict], group: str | None = None) -> dict:
    """What the event log says happened to the tasks of one job group's jobs (all when None).

    ``removed``: executors removed while those jobs ran; ``lost``: (stage, partition,
    executor) of attempts that failed on a removed executor; ``rerun``: the lost ones
    that then succeeded on another executor; ``resubmitted``: stages run again (a
    shuffle output lost with the executor); ``runs``: how often each task ended.
    """
    jobs = {e["Job ID"]: e for e in records if e["Event"] == "SparkListenerJobStart"
            and (group is None or (e.get("Properties") or {}).get("spark.jobGroup.id") == group)}
    assert jobs, f"no job of group {group!r} in the event log"
    stages = {s for e in jobs.values() for s in e["Stage IDs"]}
    begin = min(e["Submission Time"] for e in jobs.values())
    end = max(e["Completion Time"] for e in records
              if e["Event"] == "SparkListenerJobEnd" and e["Job ID"] in jobs)
    removed = {e["Executor ID"] for e in records if e["Event"] == "SparkListenerExecutorRemoved"
               and begin <= e["Timestamp"] <= end}
    ends = [e for e in records if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] in stages]
    ok = {}
    for e in ends:
        if e["Task End Reason"]["Reason"] == "Success":
            ok.setdefault((e["Stage ID"], e["Task Info"]["Index"]), set()).add(
                e["Task Info"]["Executor ID"])
    lost = sorted({(e["Stage ID"], e["Task Info"]["Index"], e["Task Info"]["Executor ID"])
                   for e in ends if e["Task End Reason"]["Reason"] != "Success"
                   and e["Task Info"]["Executor ID"] in removed})
    return {
        "removed": sorted(removed), "lost": lost,
        "failed": [e["Task End Reason"]["Reason"] for e in ends
                   if e["Task End Reason"]["Reason"] != "Success"],
        "rerun": [(s, i) for s, i, ex in lost if ok.get((s, i), set()) - {ex}],
        "resubmitted": sorted({e["Stage Info"]["Stage ID"] for e in records
                               if e["Event"] == "SparkListenerStageSubmitted"
                               and e["Stage Info"]["Stage ID"] in stages
                               and e["Stage Info"]["Stage Attempt ID"] > 0}),
        "runs": Counter((e["Stage ID"], e["Task Info"]["Index"]) for e in ends),
    }


def _assert_tasks_were_rerun(runs: dict) -> None:
    """An executor was removed and work it held was done again: a task lost with it that
    succeeded on another executor, or a stage resubmitted for the shuffle output it lost."""
    assert runs["removed"], "the event log records no executor removed while the jobs ran"
    assert runs["rerun"] or runs["resubmitted"], (
        f"no task was re-run after the worker was killed (removed {runs['removed']}, "
        f"failed {runs['failed']}, lost {runs['lost']})")


def _wait_started(markers: Path, proc: subprocess.Popen, n: int = 2) -> None:
    """Until ``n`` first attempts are inside their task: with two one-core executors, both."""
    deadline = time.monotonic() + 240
    while len(list(markers.glob("started-*-0"))) < n:
        assert proc.poll() is None, f"the driver ended before {n} tasks started in {markers}"
        assert time.monotonic() < deadline, f"{n} tasks did not start in {markers}"
        time.sleep(0.05)


def test_killed_worker_tasks_rerun(tmp_path, cluster):
    markers, result, events = tmp_path / "markers", tmp_path / "result.json", tmp_path / "events"
    events.mkdir()

    def release_control_then_kill(proc):
        _wait_started(markers / "control", proc)
        (markers / "control" / "go").touch()
        _wait_started(markers / "killed", proc)
        cluster.kill("worker1")
        (markers / "killed" / "go").touch()

    job = Path(__file__).with_name("cluster_rerun_job.py")
    cluster.submit(str(job), str(markers), str(result), during=release_control_then_kill,
                   conf={"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
                         "spark.eventLog.compress": "false"})
    records = _event_log(events)

    killed = _task_runs(records, "killed")
    _assert_tasks_were_rerun(killed)
    # The killed worker's executor held exactly the one task it was running, and that
    # task ran again (attempt 1) on the surviving executor.
    assert len(killed["lost"]) == 1 and killed["rerun"] == [killed["lost"][0][:2]], killed
    assert killed["failed"] == ["ExecutorLostFailure"], killed
    assert sorted(p.name for p in (markers / "killed").glob("started-*-1")) == [
        f"started-{killed['lost'][0][1]}-1"]

    # The same stage without a kill: every task ran once, and the assertion would fail.
    control = _task_runs(records, "control")
    assert control["failed"] == [] and set(control["runs"].values()) == {1}, control
    with pytest.raises(AssertionError):
        _assert_tasks_were_rerun(control)

    expected = [[p, sum(x * x for x in range(1000 * p, 1000 * (p + 1)))] for p in range(4)]
    out = json.loads(result.read_text())
    assert out == {"control": expected, "killed": expected}


@pytest.mark.cluster
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
    zipped = _zip_pipeline(cluster.work)
    cluster.submit("jobs/ingest.py", *over, py_files=zipped)

    ui = free_port()

    def kill_a_worker_mid_walk(proc):
        """Once the split is published, SIGKILL worker1 the moment the driver's REST API
        shows both executors running a task (its executor's task is then lost for sure)."""
        api = f"http://127.0.0.1:{ui}/api/v1/applications"
        while proc.poll() is None:
            try:
                if (remote / "split" / "_LATEST").exists():
                    app = get_json(api)[0]["id"]
                    busy = [e["activeTasks"] > 0 for e in get_json(f"{api}/{app}/executors")
                            if e["id"] != "driver"]
                    if len(busy) == 2 and all(busy):
                        cluster.kill("worker1")
                        return
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
    events = tmp_path / "events"
    events.mkdir()
    cluster.submit("jobs/sample.py", *over, during=kill_a_worker_mid_walk, py_files=zipped,
                   conf={"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
                         "spark.eventLog.compress": "false", "spark.ui.enabled": "true",
                         "spark.ui.port": str(ui)})
    assert cluster.procs["worker1"].poll() is not None, "the sample job ended before the kill"
    _assert_tasks_were_rerun(_task_runs(_event_log(events)))
    cluster.submit("jobs/infer.py", *over, py_files=zipped)

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
