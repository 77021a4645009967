"""Training: curriculum, learning on real data, exact resume, a 2-process DDP run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample
from pipeline.train.loader import Minibatch
from pipeline.train.trainer import curriculum, hard_negatives, load_model, run_train

ROOT = Path(__file__).resolve().parent.parent


def test_curriculum_uses_n_minus_one_hard_negatives_capped():
    assert [curriculum(n, 3) for n in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    assert [curriculum(n, 0) for n in range(1, 4)] == [0, 0, 0]


def _mb(hard):
    hard = torch.tensor(hard)
    z = torch.zeros(0, dtype=torch.int64)
    return Minibatch(nodes=[], features=None, nbr_idx=[], nbr_weight=[], query=torch.arange(len(hard)),
                     positive=z, easy=z, hard=hard, batch_id=3)


def test_hard_negatives_come_from_candidates_never_padding():
    mb = _mb([[5, 6, 7, -1], [8, -1, -1, -1], [-1, -1, -1, -1]])
    idx, mask = hard_negatives(mb, 2, seed=0, epoch=2)
    assert idx.shape == (3, 2)
    assert set(idx[0].tolist()) <= {5, 6, 7} and mask[0].all()
    assert idx[1, 0] == 8 and mask[1].tolist() == [True, False]
    assert not mask[2].any()
    again, _ = hard_negatives(mb, 2, seed=0, epoch=2)
    assert torch.equal(idx, again)  # a function of (seed, epoch, minibatch) only
    picks = {tuple(hard_negatives(mb, 1, seed=0, epoch=e)[0][0].tolist()) for e in range(20)}
    assert len(picks) > 1  # but different epochs draw different candidates


def test_training_on_movielens_learns(ml):
    cfg, _ = ml
    result = run_train(cfg)
    h = result.history
    assert [r["hard_negatives"] for r in h] == [0, 1, 2]
    assert h[0]["loss_hard"] is None and h[1]["loss_hard"] is not None
    assert h[-1]["loss_easy"] < h[0]["loss_easy"]
    k = cfg.train.val_k
    # Beats recommending the most popular items on the held-out validation pairs.
    assert max(r[f"val_hit_rate@{k}"] for r in h) > _popularity(cfg) > 0
    model, manifest = load_model(cfg.run_dir)
    assert manifest["model"]["num_items"] == 1682 and model.num_layers == 2
    assert list((Path(cfg.run_dir) / "_tensorboard").rglob("events.out.tfevents.*"))


def _popularity(cfg) -> float:
    """Computed here from the split's tables, independently of the trainer's validator."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.train.validation import popularity_hit_rate
    split = versioned.resolve(cfg.run_dir, "split")
    held = ds.dataset(str(split / "holdout")).to_table(filter=pc.field("kind") == "validation")
    edges = ds.dataset(str(split / "train_edges")).to_table()
    degree = np.bincount(edges.column("dst").to_numpy(), minlength=1682)[:1682].astype(float)
    return popularity_hit_rate(degree, held.column("query").to_numpy(),
                               held.column("target").to_numpy(), cfg.train.val_k)


def _small_run(spark, make_cfg, tmp_path, name, *extra):
    import pandas as pd
    g = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{g.integers(0, 30)}", 100 * u + t) for u in range(50) for t in range(6)]
    path = tmp_path / "g.csv"
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(path, index=False)
    cfg = make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
                   "data.time_col=ts", f"run_dir={tmp_path}/{name}", "sample.num_walks=20",
                   "sample.batch_size=8", "sample.easy_negatives=5", "sample.batches_per_file=2",
                   "model.hidden_dim=16", "train.epochs=3", "train.checkpoint_every=7", *extra)
    run_ingest(spark, cfg)
    run_sample(spark, cfg)
    return cfg


def test_resume_after_an_interrupted_epoch_is_exact(spark, make_cfg, tmp_path):
    straight = _small_run(spark, make_cfg, tmp_path, "straight")
    interrupted = _small_run(spark, make_cfg, tmp_path, "interrupted")
    full = run_train(straight)
    part = run_train(interrupted, stop_after_epoch=1)
    assert part.version is None and len(part.history) == 1
    assert versioned.latest_version(interrupted.run_dir, "model") is None
    interrupted.train.resume = True
    resumed = run_train(interrupted)
    a, _ = load_model(straight.run_dir)
    b, _ = load_model(interrupted.run_dir)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_two_process_gloo_run(spark, make_cfg, tmp_path):
    cfg = _small_run(spark, make_cfg, tmp_path, "ddp", "train.epochs=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
         "jobs/train.py", "data=edges", f"data.path={tmp_path}/g.csv", "data.src_col=user",
         "data.dst_col=item", "data.time_col=ts", f"run_dir={cfg.run_dir}",
         "sample.num_walks=20", "sample.batch_size=8", "sample.easy_negatives=5",
         "sample.batches_per_file=2", "model.hidden_dim=16", "train.epochs=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = versioned.read_manifest(cfg.run_dir, "model")
    assert manifest["config"]["world_size"] == 2
    assert "model/" in proc.stdout
