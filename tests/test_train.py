"""Training: curriculum, learning on real data, exact resume, a 2-process DDP run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch

from pipeline.data.features import cached_feature_store
from pipeline.data.split import read_live_items
from pipeline.errors import PipelineError
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample
from pipeline.train import checkpoint
from pipeline.train.loader import Draw, assemble, list_batch_files, read_batches
from pipeline.train.trainer import curriculum, load_model, run_train
from pipeline.train.validation import Validator

ROOT = Path(__file__).resolve().parent.parent


def test_curriculum_uses_n_minus_one_hard_negatives_capped():
    assert [curriculum(n, 3) for n in range(1, 7)] == [0, 1, 2, 3, 3, 3]
    assert [curriculum(n, 0) for n in range(1, 4)] == [0, 0, 0]


def _rows(run_dir, split="train", limit=None):
    files = list_batch_files(versioned.resolve(run_dir, "batches"), split)
    rows = read_batches(files)
    return [row for _, row in zip(range(limit), rows)] if limit else list(rows)


def test_each_epoch_draws_its_own_easy_negatives_never_the_batch_s_own(ml):
    """On real MovieLens minibatches: the stored pool and every epoch's draw from it."""
    cfg, _ = ml
    store = cached_feature_store(cfg.run_dir, versioned.latest_version(cfg.run_dir, "graph"))
    T, E = cfg.sample.num_neighbors, cfg.train.easy_negatives
    assert cfg.sample.easy_negatives > E
    for row in _rows(cfg.run_dir, limit=3):
        ids = row["nodes"][0]
        own = set(ids[row["query"]].tolist()) | set(ids[row["positive"]].tolist())
        pool = ids[row["easy"]]
        assert len(pool) == cfg.sample.easy_negatives and not set(pool.tolist()) & own
        draws = []
        for epoch in (1, 2):
            mb = assemble(row, store, T, Draw(easy=E, hard=None, seed=int(cfg.seed), epoch=epoch))
            easy = mb.nodes[0][mb.easy].numpy()
            assert len(easy) == E and not set(easy.tolist()) & own
            assert (np.bincount(easy, minlength=1682) <= np.bincount(pool, minlength=1682)).all()
            draws.append(np.sort(easy))
        assert not np.array_equal(*draws)


def test_training_on_movielens_learns(ml):
    cfg, _ = ml
    result = run_train(cfg)
    h = result.history
    assert [r["hard_negatives"] for r in h] == [0, 1, 2]
    assert h[0]["loss_hard"] is None and h[1]["loss_hard"] is not None
    assert h[-1]["loss_easy"] < h[0]["loss_easy"]
    assert all(r["temperature"] == cfg.train.temperature for r in h)      # not learned
    k = cfg.train.val_k
    # Beats recommending the most popular items on the held-out validation pairs.
    assert max(r[f"val_hit_rate@{k}"] for r in h) > _popularity(cfg) > 0
    model, manifest = load_model(cfg.run_dir)
    assert manifest.spec["num_items"] == 1682 and model.num_layers == 2
    assert list((Path(cfg.run_dir) / "_tensorboard").rglob("events.out.tfevents.*"))
    _check_bias_scale(cfg, model, manifest, result.bias_scale)


def _check_bias_scale(cfg, model, manifest, bias) -> None:
    """The published shift is the scale with the best validation MRR, recomputed by brute force."""
    by_scale = {float(s): m for s, m in bias["val_mrr"].items()}
    assert sorted(by_scale) == sorted(cfg.train.bias_scales)
    assert by_scale[bias["chosen"]] == max(by_scale.values())
    assert manifest.bias_scale == bias
    store = cached_feature_store(cfg.run_dir, manifest.inputs["graph"])
    val = Validator(cfg.run_dir, manifest.inputs, store, cfg.sample.num_neighbors,
                    torch.device("cpu"))
    with torch.no_grad():
        z = model.full_graph_embed(val.node_ids, val.features, val.nbr, val.nbr_w)
        offsets = model.query_offset.weight.numpy() if model.query_offset is not None else 0.0
        z = z.numpy()
    q, tgt = val.queries.numpy(), val.targets.numpy()
    # Queries search with z_q + o_q + s·u; the published shift is already s·u.
    scores = (z + offsets)[q] @ z.T + (z @ model.query_shift.detach().numpy())[None, :]
    scores[:, ~val.live.numpy()] = -np.inf
    scores[np.arange(len(q)), q] = -np.inf
    rank = 1 + (scores > scores[np.arange(len(q)), tgt][:, None]).sum(axis=1)
    assert np.mean(1.0 / rank) == pytest.approx(by_scale[bias["chosen"]], rel=1e-4)


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
    g = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{g.integers(0, 30)}", 100 * u + t) for u in range(50) for t in range(6)]
    path = tmp_path / "g.csv"
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(path, index=False)
    cfg = make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
                   "data.time_col=ts", f"run_dir={tmp_path}/{name}",
                   "sample.batch_size=8", "sample.easy_negatives=5", "sample.batches_per_file=2",
                   "train.easy_negatives=3", "model.hidden_dim=16", "train.epochs=3",
                   "train.checkpoint_every=7", *extra)
    run_ingest(spark, cfg)
    run_sample(spark, cfg)
    return cfg


class Preempted(Exception):
    """Stands in for the kill of a preempted job."""


def test_resume_mid_epoch_and_at_an_epoch_end_is_exact(spark, make_cfg, tmp_path, monkeypatch):
    """Preempted after step 7 (a step checkpoint inside epoch 1), resumed, stopped after
    epoch 2, resumed again: the parameters equal an uninterrupted run's."""
    # With a learned temperature, which the checkpoint must carry as well.
    straight = _small_run(spark, make_cfg, tmp_path, "straight", "train.learn_temperature=true")
    interrupted = _small_run(spark, make_cfg, tmp_path, "interrupted",
                             "train.learn_temperature=true")
    full = run_train(straight)
    assert full.history[0]["steps"] > 7 and full.history[0]["steps"] % 7
    save = checkpoint.save

    def preempted_after_step_7(directory, step, state):
        save(directory, step, state)
        if step == 7:
            raise Preempted
    monkeypatch.setattr(checkpoint, "save", preempted_after_step_7)
    with pytest.raises(Preempted):
        run_train(interrupted)
    monkeypatch.setattr(checkpoint, "save", save)
    state = checkpoint.load_latest(next((Path(interrupted.run_dir) / "_checkpoints").iterdir()))
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 7, 7)
    interrupted.train.resume = True
    part = run_train(interrupted, stop_after_epoch=2)
    assert part.version is None and len(part.history) == 2
    assert versioned.latest_version(interrupted.run_dir, "model") is None
    resumed = run_train(interrupted)
    a, _ = load_model(straight.run_dir)
    b, _ = load_model(interrupted.run_dir)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    # Epoch 1's mean loss covers only the steps after the resume; the later ones are whole.
    assert [r["loss"] for r in resumed.history][1:] == [r["loss"] for r in full.history][1:]
    temps = [r["temperature"] for r in full.history]
    assert [r["temperature"] for r in resumed.history] == temps
    assert len(set(temps)) == len(temps) and all(0.01 <= x != 0.1 for x in temps)

    # Settings that only report or pace a run reuse the model; a training setting does not.
    straight.train.val_k, straight.train.checkpoint_every = 5, 3
    again = run_train(straight)
    assert again.reused and again.version == full.version
    straight.train.lr = straight.train.lr / 2
    retrained = run_train(straight)
    assert not retrained.reused and retrained.version != full.version


def test_two_process_gloo_run(spark, make_cfg, tmp_path):
    cfg = _small_run(spark, make_cfg, tmp_path, "ddp", "train.epochs=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
         "jobs/train.py", "data=edges", f"data.path={tmp_path}/g.csv", "data.src_col=user",
         "data.dst_col=item", "data.time_col=ts", f"run_dir={cfg.run_dir}",
         "sample.batch_size=8", "sample.easy_negatives=5",
         "sample.batches_per_file=2", "model.hidden_dim=16", "train.epochs=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = versioned.read_manifest(cfg.run_dir, "model")
    assert manifest["config"]["world_size"] == 2
    assert "model/" in proc.stdout


def test_placeholders_are_never_negatives_and_hard_candidates_travel_only_when_used(
        spark, make_cfg, tmp_path):
    g = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}", 100 * u + t) for u in range(40)
            for t, i in enumerate(g.choice(25, size=6, replace=False))]
    path = tmp_path / "g.csv"
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(path, index=False)
    args = ("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
            "data.time_col=ts", "sample.batch_size=16", "sample.easy_negatives=60",
            "model.hidden_dim=8", "train.epochs=1")
    cfg = make_cfg(*args)
    run_ingest(spark, cfg)
    # Items i3 and i8 are removed: their numbers stay, as placeholders.
    pd.DataFrame([r for r in rows if r[1] not in ("i3", "i8")],
                 columns=["user", "item", "ts"]).to_csv(path, index=False)
    run_ingest(spark, cfg)
    first = run_sample(spark, cfg)
    live = read_live_items(cfg.run_dir, versioned.latest_version(cfg.run_dir, "graph"), 25)
    assert (~live).sum() == 2
    positives = np.zeros(25, dtype=np.int64)
    for split in ("train", "validation"):
        for row in _rows(cfg.run_dir, split):
            ids = row["nodes"][0]
            own = set(ids[row["query"]].tolist()) | set(ids[row["positive"]].tolist())
            pool = ids[row["easy"]]
            # 60 draws from ~20 live items: a placeholder would be drawn if it could be.
            assert len(pool) == 60 and live[pool].all() and not set(pool.tolist()) & own
            assert all(len(h) == 0 for h in row["hard"])
            if split == "train":
                np.add.at(positives, ids[row["positive"]], 1)
    weights = ds.dataset(str(versioned.resolve(cfg.run_dir, "batches") / "item_weights")).to_table()
    assert weights.column("positives").to_numpy().tolist() == positives.tolist()
    w = weights.column("weight").to_numpy()
    assert (w[~live] == 0).all() and (w[live] > 0).all()
    assert first.counts["batches"]["hard_candidates"] == 0

    hard = make_cfg(*args, "train.max_hard_negatives=2")
    with pytest.raises(PipelineError, match="carry no hard candidates; re-run jobs/sample.py"):
        run_train(hard)
    second = run_sample(spark, hard)
    assert second.versions["batches"] != first.versions["batches"]
    assert {"split", "neighbors", "pairs"} <= set(second.reused)
    assert second.counts["batches"]["hard_candidates"] == hard.sample.num_hard
    assert any(len(h) for row in _rows(hard.run_dir) for h in row["hard"])


def test_no_positive_pairs_stops_before_training(spark, make_cfg, tmp_path):
    """Every user engaged with one item: nothing co-occurs, so no model may be published."""
    path = tmp_path / "g.csv"
    pd.DataFrame([(f"u{u}", f"i{u % 10}", u) for u in range(40)],
                 columns=["user", "item", "ts"]).to_csv(path, index=False)
    cfg = make_cfg("data=edges", f"data.path={path}", "data.src_col=user", "data.dst_col=item",
                   "data.time_col=ts", f"run_dir={tmp_path}/lonely", "sample.batch_size=8",
                   "sample.easy_negatives=5", "train.easy_negatives=3")
    run_ingest(spark, cfg)
    sampled = run_sample(spark, cfg)
    assert sampled.counts["pairs"]["pairs"] == 0
    batches = sampled.versions["batches"]
    with pytest.raises(PipelineError, match=rf"^train: batches/{batches} holds no training "
                                            r"minibatches \(0 in all\): no positive pairs"):
        run_train(cfg)
    assert versioned.latest_version(cfg.run_dir, "model") is None


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    for step in (7, 14):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))})
    assert checkpoint.load_latest(tmp_path)["step"] == 14
    newest = tmp_path / "ckpt-000000014.pt"
    newest.write_bytes(newest.read_bytes()[:50])          # cut short, as a disk fault would
    state = checkpoint.load_latest(tmp_path)
    assert state["step"] == 7 and torch.equal(state["w"], torch.full((3,), 7.0))
    (tmp_path / "ckpt-000000007.pt").write_bytes(b"")
    assert checkpoint.load_latest(tmp_path) is None
