"""The entry scripts as a user runs them: python, spark-submit, bad input."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(args, **kw):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_python_job_with_overrides(tmp_path):
    (tmp_path / "e.csv").write_text("board,pin\nb1,p1\nb1,p2\nb2,p2\n")
    proc = run([sys.executable, "jobs/ingest.py", "data=edges", f"data.path={tmp_path}/e.csv",
                "data.src_col=board", "data.dst_col=pin", f"run_dir={tmp_path}/run"])
    assert proc.returncode == 0, proc.stderr
    assert "4 nodes {'item': 2, 'user': 2}, 3 edges" in proc.stdout
    assert (tmp_path / "run" / "graph" / "_LATEST").exists()
    # The console shows the summary; log lines and Spark's start-up notices go elsewhere.
    assert "[INFO]" not in proc.stdout + proc.stderr and "log4j" not in proc.stderr
    assert "published graph/" in _log(tmp_path / "run", "ingest")
    verbose = run([sys.executable, "jobs/ingest.py", "data=edges", f"data.path={tmp_path}/e.csv",
                   "data.src_col=board", "data.dst_col=pin", f"run_dir={tmp_path}/run",
                   "hydra.verbose=true"])
    assert "[INFO] - graph/" in verbose.stdout                   # reused, and says so


def _log(run_dir: Path, job: str) -> str:
    """The newest log file of a job in a run directory."""
    return sorted((run_dir / "_logs" / job).glob(f"*/{job}.log"))[-1].read_text()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    proc = run([sys.executable, "jobs/ingest.py", "data=edges",
                f"data.path={tmp_path}/missing.csv", f"run_dir={tmp_path}/run"])
    assert proc.returncode == 2
    assert f"error: data.path: no such file or directory: {tmp_path}/missing.csv" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_spark_submit_keeps_its_master_and_takes_overrides(tmp_path):
    (tmp_path / "e.csv").write_text("a,b\n1,2\n2,3\n3,1\n")
    proc = run([str(BIN / "spark-submit"), "--master", "local[1]", "jobs/ingest.py",
                "data=edges", f"data.path={tmp_path}/e.csv", "data.src_col=a", "data.dst_col=b",
                "data.bipartite=false", f"run_dir={tmp_path}/run",
                "spark.master='local[2]'", "++spark.conf.spark.sql.shuffle.partitions=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "master local[1]" in _log(tmp_path / "run", "ingest")  # not spark.master=local[2]
    assert "3 nodes" in proc.stdout and "3 edges" in proc.stdout


def test_an_unexpected_error_is_one_line_exit_2_and_a_logged_traceback(tmp_path, capsys,
                                                                         monkeypatch, make_cfg):
    log_file = tmp_path / "job.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(sys, "argv", ["jobs/infer.py"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @cli.job
    def broken(cfg):
        raise ValueError("model.pt: invalid load key, 'x'")
    try:
        with pytest.raises(SystemExit) as exit_info:
            broken(make_cfg())
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: infer: unexpected ValueError: model.pt: invalid load key, 'x' "
                          f"(nothing was published; the traceback is in {log_file}")
    logged = log_file.read_text()
    assert "Traceback" in logged and "raise ValueError" in logged
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError):
        broken(make_cfg())
