"""A Spark standalone master and one-core workers on 127.0.0.1, from pyspark's own ``bin``.

What the cluster tests (``tests/test_cluster.py``) and the scale ladder
(``benchmarks/bench_scale.py``) run on, so that the driver and the
executors are separate processes, as on a real cluster. Each process runs
in its own session (process group), so :meth:`StandaloneCluster.kill` takes
a worker down with the executors it started.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark

SPARK_BIN = Path(pyspark.__file__).parent / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    return json.load(urllib.request.urlopen(url, timeout=2))


class StandaloneCluster:
    """``start(workers)`` one-core workers of ``worker_memory`` each; logs under ``work``."""

    def __init__(self, work: Path, worker_memory: str = "1g"):
        self.work, self.worker_memory, self.procs = work, worker_memory, {}
        self.port, self.ui = free_port(), free_port()
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_HOME": str(SPARK_BIN.parent),
                    "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                    "SPARK_LOG_DIR": str(work / "logs"), "SPARK_WORKER_DIR": str(work / "workers")}

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([str(SPARK_BIN / "spark-class"), *args],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start(self, workers: int = 2, timeout: float = 180) -> None:
        """Start the master and the workers; return once every worker is ALIVE."""
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui))
        for i in range(workers):
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host",
                        "127.0.0.1", "--cores", "1", "--memory", self.worker_memory,
                        "--webui-port", str(free_port()), self.url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                state = get_json(f"http://127.0.0.1:{self.ui}/json")
                if sum(w["state"] == "ALIVE" for w in state["workers"]) == workers:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not start; logs in {self.work}")

    def worker_pids(self) -> list[int]:
        return [p.pid for n, p in self.procs.items() if n.startswith("worker")]

    def kill(self, name: str) -> None:
        """SIGKILL a process group (a worker JVM and the executors it started)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
