"""Scale ladder: the whole pipeline on growing synthetic graphs, on a real Spark cluster.

For each size (edges; default 1M, 4M, 16M) a synthetic bipartite graph with
power-law item popularity (``bench_sampling.power_law_graph``: about 10 edges
per item, 0.4 users per edge) goes through

    ingest -> sample (sample.mode=join) -> train (a fixed number of steps) -> infer -> index

calling the jobs' pipeline functions with a config composed by Hydra as the
jobs compose it. Spark runs on a standalone master with two one-core workers
on 127.0.0.1 (started as tests/test_cluster.py starts them), so the driver and
the executors are separate processes. Each size runs in a fresh driver process
(this script, ``--one``) with a fresh cluster, so one size's heap does not
count against the next.

Training is capped: ``train.epochs=1`` ending after ``--train-steps`` minibatches
(no setting caps steps, so the benchmark's loader reports at most that many to
the trainer, whose epoch loop stops there). The train stage's time also includes what the trainer
does once per run over the whole graph (validation over all items, the bias
scale's MRR, publishing), reported apart as ``train_steps`` (the epoch's own
seconds). The validation rows are held at about ``--holdout`` pairs
(``split.protocol=random_edges``, ``split.holdout_fraction`` = 2 x holdout / edges),
so the brute-force validation scorer (queries x all items) stays linear in the
graph; the sampling quality check (``sample.quality_sample``) is off.

Per size and stage: seconds, peak RSS of the driver (this Python process plus
its JVM) and of the executors (each executor JVM with its Python workers,
sampled every 0.2 s with psutil in a background thread), and the size of the
stage's output. Then per stage the growth exponent α (least-squares slope of
log seconds on log edges) and the driver's peak RSS ratio, largest over
smallest size. Last lines: ``scale_exponent_max`` (largest α over the stages;
goal <= 1.15) and ``driver_rss_ratio`` (largest over stages of the driver's peak
RSS ratio; goal <= 1.5).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_scale.py \
        --sizes 100000,200000,400000 --results /tmp/bench_scale.jsonl
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_scale.py   # 1M, 4M, 16M: hours
    .venv/bin/python benchmarks/bench_scale.py --report /tmp/bench_scale.jsonl  # table again
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ("ingest", "sample", "train", "infer", "index")
SPARK_STAGES = ("ingest", "sample", "infer")
OUTPUTS = {"ingest": ("graph",), "sample": ("split", "neighbors", "pairs", "batches"),
           "train": ("model",), "infer": ("embeddings",), "index": ("index",)}
EXECUTOR_CORES = 2  # two one-core workers; train and index run in the driver on one core


# --- RSS sampling -------------------------------------------------------------------------------

class RssMonitor:
    """Peak RSS per stage of the driver (Python + its JVM) and of the executors, every ``every`` s.

    An executor is a worker's child JVM with its Python daemon and workers; ``executor`` is the
    largest one executor reached, ``executors`` the largest sum over both.
    """

    def __init__(self, driver_jvm_pid: int, worker_pids: list[int], every: float = 0.2):
        import psutil
        self.psutil, self.every = psutil, every
        self.me, self.jvm = psutil.Process(), psutil.Process(driver_jvm_pid)
        self.workers = [psutil.Process(p) for p in worker_pids]
        self.stage, self.peaks, self._stop = None, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, procs) -> int:
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except self.psutil.Error:
                pass
        return total

    def _children(self, p):
        try:
            return p.children(recursive=True)
        except self.psutil.Error:
            return []

    def sample(self) -> dict:
        py = self._rss([self.me])
        jvm = self._rss([self.jvm])
        execs = [self._rss(self._children(w)) for w in self.workers]
        return {"driver_py": py, "driver_jvm": jvm, "driver": py + jvm,
                "executor": max(execs, default=0), "executors": sum(execs)}

    def _run(self) -> None:
        while not self._stop.is_set():
            stage = self.stage
            if stage is not None:
                try:
                    s = self.sample()
                except self.psutil.Error:   # a Python worker ended mid-sample
                    continue
                peak = self.peaks.setdefault(stage, {})
                for k, v in s.items():
                    peak[k] = max(peak.get(k, 0), v)
            self._stop.wait(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


# --- one size, in its own driver process --------------------------------------------------------

def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def one_size(args) -> dict:
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq
    from hydra import compose, initialize_config_dir

    from bench_sampling import power_law_graph
    from pipeline.config import CONF_DIR
    from pipeline.evaluate.index import publish_index
    from pipeline.infer import run_infer
    from pipeline.ingest import run_ingest
    from pipeline.io import versioned
    from pipeline.sampling import run_sample
    from pipeline.spark import build_spark
    from pipeline.standalone import StandaloneCluster
    from pipeline.train import trainer

    logging.basicConfig(level=logging.WARNING)
    E = args.one
    n_items, n_users = max(10, E // 10), max(10, int(E * 0.4))
    work = Path(args.work)
    src, dst = power_law_graph(n_users, n_items, E, args.seed)
    pq.write_table(pa.table({"src": src, "dst": dst}), work / "edges.parquet")
    del src, dst

    # No setting caps training steps: the trainer's loader says it holds at most
    # --train-steps minibatches, and the epoch ends there (validation's loader is not capped).
    class CappedLoader(trainer.BatchLoader):
        def __len__(self):
            return min(super().__len__(), args.train_steps)
    trainer.BatchLoader = CappedLoader

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"run_dir={work / 'run'}", "data=edges", f"data.path={work / 'edges.parquet'}",
            "data.format=parquet", "data.src_col=src", "data.dst_col=dst",
            "split.protocol=random_edges",
            f"split.holdout_fraction={min(0.1, 2 * args.holdout / E):.8f}",
            "sample.mode=join", "sample.quality_sample=0", "train.epochs=1", "train.device=cpu",
            f"sample.partitions={args.sample_partitions}",
            f"infer.partitions={args.infer_partitions}", *args.override])

    cluster = StandaloneCluster(work / "cluster", args.worker_memory)
    (work / "cluster").mkdir()
    cluster.start()
    result = {"edges_requested": E, "seconds": {}, "rss": {}, "rss_start": {}, "bytes": {}}
    try:
        spark = build_spark(cluster.url, {
            "spark.executor.memory": args.executor_memory, "spark.executor.cores": "1",
            "spark.cores.max": str(EXECUTOR_CORES), "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": str(args.shuffle_partitions),
            "spark.default.parallelism": str(args.shuffle_partitions)}, app_name="bench-scale")
        spark.range(10).count()  # JVMs, executors and Python workers up before timing
        queries = None
        jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        with RssMonitor(jvm_pid, cluster.worker_pids()) as mon:
            for stage in STAGES:
                result["rss_start"][stage] = mon.sample()
                mon.stage = stage
                t0 = time.perf_counter()
                if stage == "ingest":
                    counts = run_ingest(spark, cfg).counts
                    result["edges"], result["items"] = counts["edges_out"], counts["nodes"]["item"]
                    result["users"] = counts["nodes"].get("user", 0)
                elif stage == "sample":
                    out = run_sample(spark, cfg)
                    result["sample_counts"] = {k: v for k, v in out.counts.items()}
                elif stage == "train":
                    tr = trainer.run_train(cfg)
                    result["train_steps"] = tr.history[-1]["steps"]
                    result["train_steps_seconds"] = tr.history[-1]["seconds"]
                elif stage == "infer":
                    emb_version = run_infer(spark, cfg).version
                    n = result["items"]
                    queries = np.random.default_rng(args.seed).choice(n, min(n, 1000),
                                                                      replace=False)
                else:
                    publish_index(cfg.run_dir, cfg.eval, emb_version, np.sort(queries),
                                  keep=cfg.keep_versions, seed=int(cfg.seed))
                result["seconds"][stage] = time.perf_counter() - t0
                mon.stage = None
                result["rss"][stage] = mon.peaks.get(stage, mon.sample())
                result["bytes"][stage] = {s: _du(versioned.resolve(cfg.run_dir, s))
                                          for s in OUTPUTS[stage]}
                print(f"  {E:,} edges: {stage} {result['seconds'][stage]:.1f} s, driver peak "
                      f"{result['rss'][stage]['driver'] / 2**20:,.0f} MiB, executors peak "
                      f"{result['rss'][stage]['executors'] / 2**20:,.0f} MiB", flush=True)
        spark.stop()
    finally:
        cluster.stop()
    return result


# --- the ladder ---------------------------------------------------------------------------------

def _fit(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) > 1 else float("nan")


def report(results: list[dict]) -> None:
    results = sorted(results, key=lambda r: r["edges"])
    mib = 2 ** 20
    print("\nper size and stage (seconds; peak RSS in MiB: driver = Python + JVM, "
          "executor = one executor JVM + its Python workers, executors = both):")
    print("| edges | items | stage | seconds | core-s per M edges | driver py | driver jvm | "
          "driver | executor | executors | output MB | B/edge | B/item |")
    print("|" + "---|" * 13)
    for r in results:
        for st in STAGES:
            rss, b = r["rss"][st], sum(r["bytes"][st].values())
            cores = EXECUTOR_CORES if st in SPARK_STAGES else 1
            print(f"| {r['edges']:,} | {r['items']:,} | {st} | {r['seconds'][st]:.1f} | "
                  f"{r['seconds'][st] * cores / (r['edges'] / 1e6):.0f} | "
                  f"{rss['driver_py'] / mib:,.0f} | {rss['driver_jvm'] / mib:,.0f} | "
                  f"{rss['driver'] / mib:,.0f} | {rss['executor'] / mib:,.0f} | "
                  f"{rss['executors'] / mib:,.0f} | {b / 1e6:,.1f} | {b / r['edges']:.1f} | "
                  f"{b / r['items']:.1f} |")
        print(f"|  |  | (train steps: {r['train_steps']} in {r['train_steps_seconds']:.1f} s; "
              f"outputs by table: {json.dumps(r['bytes'])}) |")
    edges = [r["edges"] for r in results]
    alphas, ratios = {}, {}
    lo, hi = min(results, key=lambda r: r["edges"]), max(results, key=lambda r: r["edges"])
    print("\nper stage: α = slope of log seconds on log edges; driver peak RSS largest / smallest")
    for st in STAGES:
        alphas[st] = _fit(edges, [r["seconds"][st] for r in results])
        ratios[st] = hi["rss"][st]["driver"] / lo["rss"][st]["driver"]
        ex = hi["rss"][st]["executor"] / max(1, lo["rss"][st]["executor"])
        print(f"  {st:7s} alpha={alphas[st]:.2f}  driver_rss_ratio={ratios[st]:.2f}  "
              f"executor_rss_ratio={ex:.2f}")
    alphas["train_steps"] = _fit(edges, [r["train_steps_seconds"] for r in results])
    print(f"  (train's fixed steps alone: alpha={alphas['train_steps']:.2f})")
    print(f"sizes={','.join(str(e) for e in edges)}")
    print(f"driver_rss_ratio_spark_stages={max(ratios[s] for s in SPARK_STAGES):.2f}")
    print(f"scale_exponent_max={max(alphas[s] for s in STAGES):.2f}")
    print(f"driver_rss_ratio={max(ratios.values()):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,4000000,16000000", help="edges, comma-separated")
    ap.add_argument("--train-steps", type=int, default=32, help="training steps (minibatches "
                    "of sample.batch_size=512 pairs)")
    ap.add_argument("--holdout", type=int, default=2000, help="validation pairs (about)")
    ap.add_argument("--sample-partitions", type=int, default=0)
    ap.add_argument("--infer-partitions", type=int, default=0)
    ap.add_argument("--shuffle-partitions", type=int, default=4)
    ap.add_argument("--worker-memory", default="3g")
    ap.add_argument("--executor-memory", default="2g")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep each size's run directory under this folder")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override")
    ap.add_argument("--results", help="append each size's figures to this JSON-lines file")
    ap.add_argument("--report", help="only print the report of a --results file's sizes")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        Path(args.json).write_text(json.dumps(one_size(args)))
        return
    if args.report:
        report([json.loads(line) for line in Path(args.report).read_text().splitlines() if line])
        return

    results = []
    for E in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{E}-", dir=args.keep))
        out = work / "result.json"
        t0 = time.perf_counter()
        print(f"size {E:,} edges (work dir {work})", flush=True)
        passed = [a for a in sys.argv[1:]]
        subprocess.run([sys.executable, __file__, *passed, "--one", str(E), "--work", str(work),
                        "--json", str(out)], check=True)
        results.append(json.loads(out.read_text()))
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(results[-1]) + "\n")
        print(f"  size {E:,} done in {time.perf_counter() - t0:.0f} s", flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(sorted(results, key=lambda r: r["edges"]))


if __name__ == "__main__":
    main()
