"""The scheduled refresh: incremental neighbourhoods, release, gate, rollback, lock, faults."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from pipeline.errors import PipelineError
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.io.manifests import ReleaseManifest
from pipeline.refresh import Refused, lock as run_lock, rollback, run_refresh
from pipeline.sampling import run_sample

SMALL = ("sample.batch_size=64", "sample.easy_negatives=40",
         "sample.hard_window=[0,0]", "train.epochs=1", "train.easy_negatives=40",
         "train.checkpoint_every=1000", "model.hidden_dim=16", "eval.ks=[10]")


def communities(n: int = 20, items: int = 12, users: int = 6, seed: int = 0) -> list[tuple]:
    """Clustered user-item edges ``(user, item, time)``: walks never leave a community."""
    rnd = random.Random(seed)
    rows, t = [], 0
    for c in range(n):
        for u in range(users):
            for i in rnd.sample(range(items), 4):
                t += 1
                rows.append((f"u{c}_{u}", f"i{c}_{i}", t))
    return rows


def write(path, rows) -> None:
    path.write_text("u,i,t\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


def changed(rows: list[tuple]) -> list[tuple]:
    """Community 0 gains an edge, community 1 loses one, community 2 gains a new item and user."""
    rows = list(rows)
    t = max(r[2] for r in rows)
    drop = next(r for r in rows if r[0] == "u1_0")
    rows.remove(drop)
    return rows + [("u0_0", "i0_99", t + 1), ("u2_new", "i2_new", t + 2), ("u2_0", "i2_new", t + 3)]


def cfg_for(make_cfg, src, *extra):
    return make_cfg("data=edges", f"data.path={src}", "data.src_col=u", "data.dst_col=i",
                    "data.time_col=t", *SMALL, *extra)


def _tables(spark, run_dir, version):
    path = versioned.resolve(run_dir, "neighbors", version)
    return [spark.read.parquet(str(path / t)) for t in ("neighbors", "hard_candidates")]


def test_incremental_neighbors_equal_a_full_run(spark, make_cfg, tmp_path):
    src = tmp_path / "e.csv"
    rows = communities()
    write(src, rows)
    cfg = cfg_for(make_cfg, src)
    run_ingest(spark, cfg)
    first = run_sample(spark, cfg, training=False)
    assert set(first.versions) == {"split", "neighbors"}
    write(src, changed(rows))
    run_ingest(spark, cfg)
    inc = run_sample(spark, cfg, neighbors_from=first.versions["neighbors"], training=False)
    c = inc.counts["neighbors"]
    # Only communities 0, 1 and 2 changed, and walks never leave a community.
    touched = {i for _, i, _ in rows + changed(rows) if i.split("_")[0] in ("i0", "i1", "i2")}
    assert 0 < c["recomputed_items"] <= len(touched)
    assert c["reused_items"] == c["items"] - c["recomputed_items"] >= c["items"] - len(touched)
    assert c["reused_from"] == first.versions["neighbors"] and c["changed_edges"] > 0

    full_cfg = cfg_for(make_cfg, src, f"run_dir={tmp_path / 'full'}")
    write(src, rows)
    run_ingest(spark, full_cfg)          # the same id map history as the incremental run
    write(src, changed(rows))
    run_ingest(spark, full_cfg)
    full = run_sample(spark, full_cfg, training=False)
    assert full.counts["neighbors"]["recomputed_items"] == c["items"]
    for a, b in zip(_tables(spark, cfg.run_dir, inc.versions["neighbors"]),
                    _tables(spark, full_cfg.run_dir, full.versions["neighbors"])):
        assertDataFrameEqual(a, b, checkRowOrder=True)


def test_refresh_release_gate_rollback_and_pruning(spark, make_cfg, tmp_path, monkeypatch):
    src = tmp_path / "e.csv"
    rows = communities()
    write(src, rows)
    cfg = cfg_for(make_cfg, src, "refresh.keep_versions=2")
    with pytest.raises(PipelineError, match="no published model .* refresh.retrain=true"):
        run_refresh(spark, cfg)
    first = run_refresh(spark, cfg_for(make_cfg, src, "refresh.retrain=true"))
    assert first.previous is None and set(first.versions) == {
        "graph", "split", "neighbors", "pairs", "batches", "model", "embeddings", "index"}
    assert 0 <= first.metrics["hit_rate@10"] <= 1 and first.metrics["queries"] > 0
    with pytest.raises(Refused, match=f"nothing changed since release/{first.version}"):
        run_refresh(spark, cfg)

    full_dir = tmp_path / "full"                       # the same history, refreshed in full
    shutil.copytree(cfg.run_dir, full_dir)
    write(src, changed(rows))
    second = run_refresh(spark, cfg)
    assert second.previous == first.version
    assert second.versions["model"] == first.versions["model"]          # no retraining
    n, e = second.counts["neighbors"], second.counts["embeddings"]
    assert n["reused_from"] == first.versions["neighbors"] and 0 < n["recomputed_items"] < 40
    assert n["reused_items"] > 180
    assert e["reused_from"] == first.versions["embeddings"] and e["changed_items"] > 0
    assert n["recomputed_items"] <= e["recomputed_items"] < 60 and e["reused_items"] > 180
    full = run_refresh(spark, cfg_for(make_cfg, src, f"run_dir={full_dir}",
                                      "refresh.incremental=false"))
    assert full.counts["embeddings"]["reused_items"] == 0
    for stage in ("neighbors", "embeddings"):
        for table in ("neighbors", "hard_candidates") if stage == "neighbors" else ("embeddings",):
            a, b = (pq.read_table(versioned.resolve(d, stage, r.versions[stage]) / table)
                    for d, r in ((cfg.run_dir, second), (full_dir, full)))
            assert a.sort_by("node").equals(b.sort_by("node")), (stage, table)
    assert full.metrics == second.metrics
    manifest = ReleaseManifest.read(cfg.run_dir)
    assert manifest.versions == second.versions and manifest.counts == second.counts
    assert manifest.previous == first.version

    # The gate: a refresh whose hit-rate drops too far publishes nothing and
    # leaves every stage on the current release.
    import pipeline.refresh as refresh
    real = refresh.evaluate

    def worse(c, version, split):
        metrics, index = real(c, version, split)
        return {**metrics, "hit_rate@10": second.metrics["hit_rate@10"] - 0.5}, index
    monkeypatch.setattr(refresh, "evaluate", worse)
    write(src, changed(rows) + [("u5_0", "i5_0", 10_000)])
    with pytest.raises(Refused, match=r"hit_rate@10 -?[\d.]+ is more than refresh.max_regression=0.02 "
                                      rf"below release/{second.version}"):
        run_refresh(spark, cfg)
    assert versioned.latest_version(cfg.run_dir, "release") == second.version
    for stage, version in second.versions.items():
        assert versioned.latest_version(cfg.run_dir, stage) == version
    monkeypatch.setattr(refresh, "evaluate", real)
    third = run_refresh(spark, cfg)
    # keep_versions=2: the first release and the stage versions only it used are gone.
    assert versioned.list_versions(cfg.run_dir, "release") == [second.version, third.version]
    assert first.versions["graph"] not in versioned.list_versions(cfg.run_dir, "graph")
    assert first.versions["model"] in versioned.list_versions(cfg.run_dir, "model")

    # Rollback (the job's --rollback) points the release and every stage back.
    out = subprocess.run([sys.executable, "jobs/refresh.py", "--rollback", f"run_dir={cfg.run_dir}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"release/{second.version} is current again"
    assert versioned.latest_version(cfg.run_dir, "release") == second.version
    for stage, version in second.versions.items():
        assert versioned.latest_version(cfg.run_dir, stage) == version
    with pytest.raises(PipelineError, match="no release before"):
        rollback(cfg.run_dir)


# The lock module alone (pipeline.refresh would load Spark and torch into every process).
LOAD_LOCK = """
import importlib.util
spec = importlib.util.spec_from_file_location("lock", "pipeline/refresh/lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
RunLock, LockHeld = lock.RunLock, lock.LockHeld
"""
HOLD = LOAD_LOCK + """
import os, sys, time
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir) -> subprocess.Popen:
    """A process that takes the lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_lock_refuses_a_live_holder_and_is_free_once_it_is_killed(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(run_lock.LockHeld, match=rf"pid {holder.pid}, since "):
            with run_lock.RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock.RunLock(tmp_path) as held:          # the kernel released the killed one's lock
        assert held.took_over["pid"] == holder.pid
        with pytest.raises(run_lock.LockHeld, match=f"pid {os.getpid()}"):
            with run_lock.RunLock(tmp_path):
                pass
    with run_lock.RunLock(tmp_path) as held:          # a clean exit leaves no holder record
        assert held.took_over is None


RACE = LOAD_LOCK + """
import os, random, signal, sys, time
run_dir, seed = sys.argv[1], int(sys.argv[2])
rng, held = random.Random(seed), 0
marker = os.path.join(run_dir, "holder")
for _ in range(2000):
    if held == 5:
        break
    try:
        with RunLock(run_dir):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                # Left by a holder killed mid-hold, which is gone or a zombie (its
                # parent reaps it later); anything else is a second holder.
                try:
                    stat = open("/proc/%s/stat" % open(marker).read()).read()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        print("TWO HOLDERS", flush=True)
                except FileNotFoundError:
                    pass
                os.unlink(marker)
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            held += 1
            print("acquired", flush=True)
            if seed % 4 == 0 and held == 2:
                os.kill(os.getpid(), signal.SIGKILL)   # die holding the lock
            time.sleep(rng.random() * 0.005)
            os.unlink(marker)
    except LockHeld:
        time.sleep(rng.random() * 0.002)
"""


def test_eight_racing_processes_never_hold_the_lock_together(tmp_path):
    """Two of them are killed while holding it; the kernel frees it for the others."""
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(seed)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent) for seed in range(8)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert not any("TWO HOLDERS" in out for out in outs)
    assert sorted(p.returncode for p in procs) == [-9, -9, 0, 0, 0, 0, 0, 0]
    assert [out.count("acquired") for out in outs] == [2, 5, 5, 5, 2, 5, 5, 5]
    with run_lock.RunLock(tmp_path):
        pass


def test_truncated_parquet_in_an_input_version_names_the_file(spark, make_cfg, tmp_path):
    src = tmp_path / "e.csv"
    write(src, communities(n=2))
    cfg = cfg_for(make_cfg, src)
    graph = run_ingest(spark, cfg)
    part = sorted((versioned.resolve(cfg.run_dir, "graph") / "edges").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(versioned.CorruptFile) as err:
        run_sample(spark, cfg)
    assert str(err.value) == (f"graph/{graph.version}: {part} is truncated or corrupted "
                              f"(100 bytes, no Parquet footer); rebuild the stage (force=true)")


def _refresh(run_dir, src, *extra):
    return subprocess.Popen(
        [sys.executable, "jobs/refresh.py", "data=edges", f"data.path={src}", "data.src_col=u",
         "data.dst_col=i", "data.time_col=t", *SMALL, f"run_dir={run_dir}", "spark.master='local[2]'",
         *extra], cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_sigkill_mid_stage_keeps_the_release_and_the_next_refresh_succeeds(spark, make_cfg,
                                                                           tmp_path):
    """A refresh killed while each stage writes; readers keep working; the next one cleans up."""
    import signal
    import time

    from pipeline.io.embeddings import read_embeddings
    src = tmp_path / "e.csv"
    rows = communities(n=6)
    write(src, rows)
    cfg = cfg_for(make_cfg, src)
    first = run_refresh(spark, cfg_for(make_cfg, src, "refresh.retrain=true"))
    write(src, changed(rows))
    for stage in ("graph", "neighbors", "embeddings"):
        proc = _refresh(cfg.run_dir, src)
        root = versioned.stage_dir(cfg.run_dir, stage)
        while proc.poll() is None and not (root.is_dir() and any(
                p.name.startswith("_tmp-") for p in root.iterdir())):
            time.sleep(0.02)
        assert proc.poll() is None, f"the refresh ended before writing {stage}: {proc.stdout.read()}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert any(p.name.startswith("_tmp-") for p in root.iterdir())      # debris of the kill
        assert versioned.latest_version(cfg.run_dir, "release") == first.version
        assert versioned.latest_version(cfg.run_dir, stage) == first.versions[stage]
        release = ReleaseManifest.read(cfg.run_dir)
        assert read_embeddings(cfg.run_dir, release.versions["embeddings"]).matrix.shape[0] > 0
    proc = _refresh(cfg.run_dir, src)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    second = ReleaseManifest.read(cfg.run_dir)
    assert second.previous == first.version
    with run_lock.RunLock(cfg.run_dir) as held:        # free, and the refresh left no holder
        assert held.took_over is None
    for stage in second.versions:
        assert not [p for p in versioned.stage_dir(cfg.run_dir, stage).iterdir()
                    if p.name.startswith("_tmp-")], stage
    proc = _refresh(cfg.run_dir, src)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert f"error: nothing changed since release/{second.version}; not publishing\n" in out
