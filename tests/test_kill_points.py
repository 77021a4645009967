"""SIGKILL at the moments that matter: in the middle of a Parquet write, during a checkpoint
write. After each, readers see the previous version (or checkpoint), and the next run
recovers to the result of an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.ingest import read_graph, run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample
from pipeline.train import checkpoint
from pipeline.train.trainer import load_model, run_train

ROOT = Path(__file__).resolve().parent.parent


def _edges(path: Path, n: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{g.integers(0, 40)}", 100 * u + t) for u in range(n) for t in range(6)]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(path, index=False)


def _data(path: Path) -> list[str]:
    return ["data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
            "data.time_col=ts"]


def _tables(run_dir, version) -> dict:
    path = versioned.resolve(run_dir, "graph", version)
    keys = {"nodes": ["node"], "edges": ["src", "dst", "time"]}
    return {t: pq.read_table(path / t).sort_by([(k, "ascending") for k in keys[t]])
            for t in keys}


def test_sigkill_in_the_middle_of_a_parquet_write(spark, make_cfg, tmp_path):
    """jobs/ingest.py killed once a part file of the new graph exists, before its _SUCCESS."""
    src = tmp_path / "e.csv"
    _edges(src, 60, 0)
    cfg = make_cfg(*_data(src))
    first = run_ingest(spark, cfg)
    before = _tables(cfg.run_dir, first.version)
    _edges(src, 80, 1)                                    # the next day's source
    proc = subprocess.Popen(
        [sys.executable, "jobs/ingest.py", *_data(src), f"run_dir={cfg.run_dir}",
         "spark.master='local[1]'"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    root = versioned.stage_dir(cfg.run_dir, "graph")
    part = None
    deadline = time.monotonic() + 240
    while part is None and proc.poll() is None and time.monotonic() < deadline:
        for tmp in (p for p in root.iterdir() if p.name.startswith(versioned.TMP_PREFIX)):
            part = next((f for f in tmp.rglob("*.parquet")), None)
            if part is not None:
                assert not (tmp / versioned.SUCCESS).exists()
                break
        else:
            time.sleep(0.002)
    assert proc.poll() is None, f"ingest ended before writing Parquet: {proc.stdout.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert part is not None and [p for p in root.iterdir() if p.name.startswith("_tmp-")]
    # Readers: the previous version, complete, checked and loadable.
    assert versioned.latest_version(cfg.run_dir, "graph") == first.version
    assert versioned.list_versions(cfg.run_dir, "graph") == [first.version]
    versioned.check_version(cfg.run_dir, "graph")
    nodes, edges, _ = read_graph(spark, cfg.run_dir)
    assert (nodes.count(), edges.count()) == (before["nodes"].num_rows, before["edges"].num_rows)
    assert _tables(cfg.run_dir, first.version) == before
    # The next run cleans the debris and equals an uninterrupted history.
    again = run_ingest(spark, cfg)
    assert not [p for p in root.iterdir() if p.name.startswith("_tmp-")]
    ref = make_cfg(*_data(tmp_path / "ref.csv"), f"run_dir={tmp_path / 'ref'}")
    _edges(tmp_path / "ref.csv", 60, 0)
    run_ingest(spark, ref)
    _edges(tmp_path / "ref.csv", 80, 1)
    straight = run_ingest(spark, ref)
    assert _tables(cfg.run_dir, again.version) == _tables(ref.run_dir, straight.version)


TRAIN = ("sample.batch_size=8", "sample.easy_negatives=5", "sample.batches_per_file=2",
         "train.easy_negatives=3", "model.hidden_dim=16", "train.epochs=2",
         "train.checkpoint_every=7")

# A training run whose second checkpoint write is cut off halfway by a SIGKILL.
KILLED_TRAINER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from hydra import compose, initialize_config_dir
    from pipeline.config import CONF_DIR
    from pipeline.train.trainer import run_train

    real, calls = torch.save, []

    def dies_mid_write(obj, f, *args, **kw):
        if isinstance(obj, dict) and "step" in obj:
            calls.append(obj["step"])
            if len(calls) == 2:
                buf = io.BytesIO()
                real(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                print("killed writing step", obj["step"], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *args, **kw)

    torch.save = dies_mid_write
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=sys.argv[1:])
    run_train(cfg)
""")


def test_sigkill_during_a_checkpoint_write(spark, make_cfg, tmp_path):
    """The torn checkpoint is never loaded: resuming from the one before gives the parameters
    of an uninterrupted run."""
    src = tmp_path / "g.csv"
    _edges(src, 50, 0)
    runs = {}
    for name in ("straight", "killed"):
        overrides = (*_data(src), f"run_dir={tmp_path / name}", *TRAIN)
        runs[name] = (make_cfg(*overrides), overrides)
    run_ingest(spark, runs["straight"][0])
    run_sample(spark, runs["straight"][0])
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")      # the same inputs
    straight, (killed, overrides) = run_train(runs["straight"][0]), runs["killed"]
    assert straight.history[0]["steps"] > 7
    proc = subprocess.run([sys.executable, "-c", KILLED_TRAINER, *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    torn_step = int(proc.stdout.split("killed writing step")[1])
    (ckpt_dir,) = (Path(killed.run_dir) / "_checkpoints").iterdir()
    torn = ckpt_dir / f"ckpt-{torn_step:09d}.tmp"
    assert torn.exists() and sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["ckpt-000000007.pt"]
    with pytest.raises(Exception):
        torch.load(torn, weights_only=True)
    state = checkpoint.load_latest(ckpt_dir)             # the previous one, intact
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 7, 7)
    assert versioned.latest_version(killed.run_dir, "model") is None     # nothing published
    killed.train.resume = True
    resumed = run_train(killed)
    assert resumed.version is not None
    a, _ = load_model(runs["straight"][0].run_dir)
    b, _ = load_model(killed.run_dir)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert json.dumps(resumed.history[-1]["loss"]) == json.dumps(straight.history[-1]["loss"])
