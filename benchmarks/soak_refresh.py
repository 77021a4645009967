"""Chaos soak of the daily refresh: kills and bad input, and the release is never lost.

  1. a small source (``--dataset communities``: groups of 12 items and 6 users;
     ``--dataset movielens``: MovieLens-100K) goes to a CSV with a weight
     column, and ``python jobs/refresh.py refresh.retrain=true`` publishes
     release 1;
  2. each of ``--iterations`` cycles mutates the source (adds, removes and
     re-weights edges) and runs ``python jobs/refresh.py`` as cron would, with
     at random one fault:

     * ``kill``: SIGKILL to the refresh's process group after a random delay
       (up to the last clean refresh's duration);
     * ``malformed``: 1% malformed rows appended to the CSV (under
       ``ingest.on_bad_rows=fail`` the refresh must stop with one line; under
       ``quarantine`` it must publish, the bad rows counted as quarantined);
     * ``truncated``: a Parquet file of an input version the refresh reads
       (the release's neighbours or embeddings) cut short;
     * ``schema``: that file rewritten with a column of another type;
     * ``contender``: a second refresh started while the first holds the lock
       (it must stop with one line; the first must finish);

  3. after each cycle: the release (``release/_LATEST``) names complete
     versions, every version any kept release names exists and passes the
     input checks (header/footer, schema), the release's model loads,
     ``pipeline.serve.similar_items`` answers from it, the graph's counts add
     up (rows in = out + quarantined + merged + dropped) and the lock is free;
     a faulted cycle is then repaired (file restored, bad rows removed) and
     the refresh re-run cleanly, which must succeed (or find nothing changed).

Every refusal must be exit code 2 with exactly one ``error:`` line (and, for a
damaged file, one that names it). The last lines are ``key=value`` figures,
ending with ``soak_cycles=<n> faults_injected=<k> faults_survived=<k> releases_lost=0``;
the exit code is 1 if any check failed.

    .venv/bin/python benchmarks/soak_refresh.py --iterations 20
    .venv/bin/python benchmarks/soak_refresh.py --dataset movielens --iterations 5
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.io import versioned  # noqa: E402
from pipeline.io.manifests import GraphManifest, ReleaseManifest  # noqa: E402

SMALL = ["sample.batch_size=64", "sample.easy_negatives=40", "sample.hard_window=[0,0]",
         "train.epochs=1", "train.easy_negatives=40", "train.checkpoint_every=1000",
         "model.hidden_dim=16", "eval.ks=[10]", "spark.master='local[2]'",
         # On ~100 items hit-rate@10 moves by ±0.04 between refreshes by chance: the
         # default gate (0.02) would refuse most cycles, and the soak is about faults.
         "refresh.max_regression=1.0"]
JVM_NOTICES = ("NOTE: Picked up JDK_JAVA_OPTIONS", "WARNING: Using incubator modules")
FAULTS = ("kill", "malformed", "truncated", "schema", "contender")


def communities(csv: Path, n: int, rng: random.Random) -> None:
    rows, t = [], 0
    for c in range(n):
        for u in range(6):
            for i in rng.sample(range(12), 4):
                t += 1
                rows.append((f"u{c}_{u}", f"i{c}_{i}", t, round(rng.uniform(0.5, 3.0), 3)))
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "w"]).to_csv(csv, index=False)


def movielens(csv: Path, work: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_refresh import export_movielens
    ratings, features = export_movielens(work)
    df = pd.read_csv(ratings, dtype={"user_id": str, "item_id": str})
    df["w"] = 1.0
    df.to_csv(csv, index=False)
    return [f"data.features_path={features}"]


def mutate(csv: Path, rng: random.Random) -> str:
    """Add, remove and re-weight a few edges (each a local change)."""
    df = pd.read_csv(csv, dtype={"user_id": str, "item_id": str})
    n = max(2, len(df) // 200)
    drop = rng.sample(range(len(df)), n)
    reweight = rng.sample(range(len(df)), n)
    df.loc[df.index[reweight], "w"] = [round(rng.uniform(0.5, 3.0), 3) for _ in reweight]
    t = int(df.timestamp.max())
    add = []
    for _ in range(n):
        row = df.iloc[rng.randrange(len(df))]
        other = df.iloc[rng.randrange(len(df))]
        t += 1
        add.append((row.user_id, other.item_id, t, 1.0))
    df = pd.concat([df.drop(index=df.index[drop]), pd.DataFrame(add, columns=df.columns)])
    df.to_csv(csv, index=False)
    return f"-{n} +{n} ~{n} edges"


class Soak:
    def __init__(self, a, work: Path):
        self.a, self.rng = a, random.Random(a.seed)
        self.work, self.run_dir, self.csv = work, work / "run", work / "ratings.csv"
        self.data = ["data=edges", f"data.path={self.csv}", "data.src_col=user_id",
                     "data.dst_col=item_id", "data.time_col=timestamp", "data.weight_col=w"]
        self.stats = {k: 0 for k in ("iterations", "kills", "kills_after_exit", "bad_inputs",
                                     "malformed", "truncated", "schema", "contenders",
                                     "refused_clearly", "unclear_failures", "reruns_ok",
                                     "releases_published", "nothing_changed", "gate_refusals",
                                     "failures_lost_release", "lock_overlaps",
                                     "stderr_warning_lines",
                                     "faults_injected", "faults_survived")}
        self.clean_seconds = 60.0
        self.problems: list[str] = []

    # --- running the refresh ------------------------------------------------------------
    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "jobs/refresh.py", *self.data, *SMALL, f"run_dir={self.run_dir}",
             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, "PYSPARK_PYTHON": sys.executable})

    def finish(self, proc: subprocess.Popen, what: str, timeout: float = 1200) -> tuple[int, str]:
        out, err = proc.communicate(timeout=timeout)
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith(JVM_NOTICES)]
        if proc.returncode == 0:
            print(f"  {what}: {out.strip().splitlines()[-1] if out.strip() else 'ok'}", flush=True)
            self.stats["releases_published"] += 1
            return 0, ""
        errors = [x for x in lines if x.startswith("error: ")]
        if proc.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0]:
            # Exactly one error line, the last; library warnings before it are counted apart.
            self.stats["stderr_warning_lines"] += len(lines) - 1
            print(f"  {what}: exit 2: {errors[0][:240]}", flush=True)
            if "nothing changed since" in errors[0]:
                self.stats["nothing_changed"] += 1
            elif "max_regression" in errors[0]:
                self.stats["gate_refusals"] += 1
            return 2, errors[0]
        self.stats["unclear_failures"] += 1
        self.problems.append(f"{what}: exit {proc.returncode}, stderr: {err[-1500:]}")
        print(f"  {what}: UNCLEAR exit {proc.returncode}: {err[-600:]}", flush=True)
        return proc.returncode, err

    def refresh(self, what: str, *extra: str) -> tuple[int, str]:
        t0 = time.perf_counter()
        rc, msg = self.finish(self.start(*extra), what)
        if rc == 0 and not extra:
            self.clean_seconds = time.perf_counter() - t0
        return rc, msg

    # --- checks ---------------------------------------------------------------------------
    def check_release(self, when: str) -> bool:
        from pipeline.refresh.lock import LockHeld, RunLock
        from pipeline.serve import similar_items
        from pipeline.train.trainer import load_model
        problems = []
        run_dir = str(self.run_dir)
        release = versioned.latest_version(run_dir, versioned.RELEASE)
        try:
            manifest = ReleaseManifest.read(run_dir, release)
            for r in versioned.list_versions(run_dir, versioned.RELEASE):
                for stage, version in ReleaseManifest.read(run_dir, r).versions.items():
                    versioned.check_version(run_dir, stage, version)
            load_model(run_dir, manifest.versions["model"])
            index = versioned.resolve(run_dir, "index", manifest.versions["index"])
            ids = pq.read_table(index / "items").column("id").to_pylist()
            found, _ = similar_items(run_dir, self.rng.sample(ids, min(3, len(ids))), k=5)
            if not all(found):
                problems.append("similar_items answered nothing")
            c = GraphManifest.read(run_dir, manifest.versions["graph"]).counts
            rows_in = c["edge_rows_in"]
            accounted = (c["edges_out"] + c.get("edge_rows_quarantined", 0)
                         + c.get("duplicate_edges_merged", 0) + c.get("self_loops_dropped", 0))
            if rows_in != accounted:
                problems.append(f"graph counts: {rows_in} rows in, {accounted} accounted for ({c})")
        except Exception as e:                                     # noqa: BLE001
            problems.append(f"release/{release}: {type(e).__name__}: {e}")
        try:
            with RunLock(run_dir):
                pass
        except LockHeld as e:
            self.stats["lock_overlaps"] += 1
            problems.append(f"lock still held after the cycle: {e}")
        if problems:
            self.stats["failures_lost_release"] += 1
            self.problems += [f"{when}: {p}" for p in problems]
            print(f"  RELEASE CHECK FAILED ({when}): {problems}", flush=True)
            return False
        return True

    # --- faults ---------------------------------------------------------------------------
    def input_file(self) -> tuple[Path, str]:
        """A Parquet file of a version the next refresh reads: the release's neighbours
        (incremental sampling) or embeddings (incremental inference)."""
        release = ReleaseManifest.read(self.run_dir)
        stage = self.rng.choice(["neighbors", "embeddings"])
        path = versioned.resolve(self.run_dir, stage, release.versions[stage]) / stage
        return sorted(path.glob("*.parquet"))[0], stage

    def fault_file(self, kind: str) -> tuple[Path, bytes]:
        f, stage = self.input_file()
        good = f.read_bytes()
        if kind == "truncated":
            f.write_bytes(good[:-8])
        else:
            t = pq.read_table(f)
            col = "weights" if stage == "neighbors" else "embedding"
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, t.column(col).cast(pa.list_(pa.float64())))
            pq.write_table(t, f)
        return f, good

    def cycle(self, i: int) -> None:
        s = self.stats
        s["iterations"] += 1
        change = mutate(self.csv, self.rng)
        fault = self.rng.choice(FAULTS) if self.rng.random() < self.a.fault_rate else None
        print(f"cycle {i}: {change}, fault: {fault or 'none'}", flush=True)
        if fault is None:
            self.refresh("refresh")
            self.check_release(f"cycle {i}")
            return
        s["faults_injected"] += 1
        ok = True
        if fault == "kill":
            proc = self.start()
            delay = self.rng.uniform(2.0, max(3.0, self.clean_seconds))
            try:
                proc.wait(timeout=delay)
                s["kills_after_exit"] += 1
                self.finish(proc, f"refresh (ended before the kill at {delay:.1f}s)")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                s["kills"] += 1
                print(f"  killed after {delay:.1f}s", flush=True)
        elif fault == "contender":
            s["contenders"] += 1
            first = self.start()
            time.sleep(self.rng.uniform(0.0, 3.0))
            second = self.start()
            rc2, msg2 = self.finish(second, "contender")
            running = first.poll() is None
            rc1, _ = self.finish(first, "refresh")
            if rc2 == 0 and rc1 == 0:
                s["lock_overlaps"] += 1
                ok = False
                self.problems.append(f"cycle {i}: two refreshes both published")
            elif rc2 == 2 and running and "lock" not in msg2.lower() and "held" not in msg2:
                ok = False
                self.problems.append(f"cycle {i}: the contender stopped for another reason: {msg2}")
            if rc2 == 2:
                s["refused_clearly"] += 1
        elif fault == "malformed":
            s["bad_inputs"] += 1
            s["malformed"] += 1
            good = self.csv.read_text()
            n = max(1, good.count("\n") // 100)
            bad = "".join(self.rng.choice([f"u_bad{k},,{k},1.0\n", f"u_bad{k},i0_0,{k},heavy\n",
                                           f"u_bad{k},i0_0,{k},-2\n"]) for k in range(n))
            self.csv.write_text(good + bad)
            mode = self.rng.choice(["fail", "quarantine"])
            rc, msg = self.refresh(f"refresh (ingest.on_bad_rows={mode})",
                                   f"ingest.on_bad_rows={mode}")
            if rc == 2 and mode == "fail":
                s["refused_clearly"] += 1
            elif rc != 0 and not (rc == 2 and ("nothing changed" in msg or "max_regression" in msg)):
                ok = False
                self.problems.append(f"cycle {i}: bad rows under {mode}: exit {rc}: {msg}")
            self.csv.write_text(good)                               # the source is fixed
        else:
            s["bad_inputs"] += 1
            s[fault] += 1
            f, good = self.fault_file(fault)
            rc, msg = self.refresh(f"refresh ({fault} {f.parent.parent.name}/{f.parent.name}/"
                                   f"{f.name})")
            if rc == 2 and str(f) in msg:
                s["refused_clearly"] += 1
            elif rc == 2 and not ("nothing changed" in msg or "max_regression" in msg):
                ok = False                     # refused, but without naming the damaged file
                self.problems.append(f"cycle {i}: {fault} {f}: the error does not name it: {msg}")
            elif rc not in (0, 2):
                ok = False                     # (0: published without reading it)
            f.write_bytes(good)                                     # the disk is repaired
        ok = self.check_release(f"cycle {i}, after the {fault}") and ok
        rc, msg = self.refresh("clean re-run")
        if rc == 0 or (rc == 2 and ("nothing changed" in msg or "max_regression" in msg)):
            s["reruns_ok"] += 1
        else:
            ok = False
        ok = self.check_release(f"cycle {i}, after the re-run") and ok
        s["faults_survived"] += int(ok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", "--cycles", type=int, default=20)
    p.add_argument("--dataset", choices=("communities", "movielens"), default="communities")
    p.add_argument("--communities", type=int, default=8)
    p.add_argument("--fault-rate", type=float, default=0.7, help="share of cycles with a fault")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="soak-refresh-"))
    soak = Soak(a, work)
    try:
        extra = (movielens(soak.csv, work) if a.dataset == "movielens"
                 else communities(soak.csv, a.communities, soak.rng) or [])
        soak.data += extra
        rc, msg = soak.refresh("release 1", "refresh.retrain=true")
        if rc != 0:
            sys.exit(f"the first refresh failed: {msg}")
        soak.check_release("release 1")
        for i in range(1, a.iterations + 1):
            soak.cycle(i)
    finally:
        if a.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for problem in soak.problems:
        print(f"problem: {problem}")
    s = soak.stats
    for k, v in s.items():
        if k not in ("faults_injected", "faults_survived"):
            print(f"{k}={v}")
    print(f"seconds={time.perf_counter() - t0:.0f}")
    print(f"soak_cycles={s['iterations']} faults_injected={s['faults_injected']} "
          f"faults_survived={s['faults_survived']} releases_lost={s['failures_lost_release']}")
    sys.exit(1 if soak.problems else 0)


if __name__ == "__main__":
    main()
