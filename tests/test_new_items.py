"""``split.protocol=new_items``: the trained model never sees the new items, checked on what was written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from hydra import compose, initialize_config_dir

from pipeline.config import CONF_DIR
from pipeline.evaluate import run_evaluate
from pipeline.evaluate.data import load as load_eval_data
from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample
from pipeline.split import new_items
from pipeline.train.trainer import run_train
from test_evaluate import _write_graph


def _table(path: Path, columns=None):
    return ds.dataset(str(path), format="parquet").to_table(columns=columns)


@pytest.fixture(scope="module")
def inductive_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("newitems")
    path = _write_graph(tmp / "edges.csv", n_users=60, per_user=10, seed=1)
    overrides = [f"run_dir={tmp / 'run'}", "data=edges", f"data.path={path}", "data.src_col=user",
                 "data.dst_col=item", "data.time_col=ts", "split.protocol=new_items",
                 "split.new_item_fraction=0.3", "split.new_item_min_degree=3",
                 "sample.batch_size=32", "sample.easy_negatives=10",
                 "sample.hard_window=[0.1,0.6]", "sample.num_hard=3", "train.epochs=2",
                 "train.max_hard_negatives=1", "model.hidden_dim=8", "eval.ks=[5,10]",
                 "eval.bootstrap=50", "eval.baselines=[popularity,item_knn]",
                 "eval.map_items=30"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_ingest(spark, cfg)
    sample = run_sample(spark, cfg)
    train = run_train(cfg)
    return cfg, sample, train


def test_new_items_never_reach_the_model(inductive_run):
    cfg, sample, train = inductive_run
    run_dir = cfg.run_dir
    new = new_items.read(run_dir, sample.versions["split"])
    assert 0 < len(new) < 40
    sub = Path(run_dir) / new_items.INDUCTIVE_DIR
    iv = sample.inductive.versions

    # The inductive view: no edge and no held-out row touches a new item.
    split_dir = versioned.resolve(sub, "split", iv["split"])
    edges = _table(split_dir / "train_edges")
    assert not np.isin(edges.column("dst").to_numpy(), new).any()
    held = _table(split_dir / "holdout")
    for col in ("query", "target"):
        assert not np.isin(held.column(col).to_numpy(), new).any()
    assert held.num_rows > 0

    # Pairs and hard candidates.
    pairs_dir = versioned.resolve(sub, "pairs", iv["pairs"])
    pairs = _table(pairs_dir / "pairs")
    assert pairs.num_rows > 0
    for col in ("query", "positive"):
        assert not np.isin(pairs.column(col).to_numpy(), new).any()
    cands = _table(pairs_dir / "hard_negatives").column("candidates").combine_chunks()
    assert not np.isin(cands.flatten().to_numpy(), new).any()

    # Minibatches: every node of every layer (queries, positives, easy and hard
    # negatives, neighbours), train and validation.
    batches_dir = versioned.resolve(sub, "batches", iv["batches"])
    seen = 0
    for split in ("train", "validation"):
        for row in _table(batches_dir / split).to_pylist():
            layer0 = np.asarray(row["nodes"][0])
            named = [layer0[row["query"]], layer0[row["positive"]], layer0[row["easy"]],
                     layer0[np.concatenate([np.asarray(h, np.int64) for h in row["hard"]] or
                                           [np.empty(0, np.int64)])]]
            for ids in named + [np.asarray(layer) for layer in row["nodes"]]:
                assert not np.isin(ids, new).any()
            seen += 1
    assert seen > 0

    # The published model's ID-embedding rows of the new items are untouched zeros,
    # while the items it trained on moved away from zero.
    model_dir = versioned.resolve(run_dir, "model", train.version)
    state = torch.load(model_dir / "model.pt", weights_only=True)
    rows = state["id_emb.weight"]
    assert torch.count_nonzero(rows[torch.from_numpy(new)]) == 0
    known = np.setdiff1d(np.arange(rows.shape[0]), new)
    assert bool((rows[torch.from_numpy(known)].abs().sum(1) > 0).all())
    # Lineage names the evaluated split, so evaluation accepts the model's embeddings.
    inputs = versioned.read_manifest(run_dir, "model", train.version)["inputs"]
    assert inputs["split"] == sample.versions["split"]
    assert inputs["inductive_split"] == iv["split"]


def test_new_items_evaluation_scores_new_targets_with_the_retrained_bound(spark, inductive_run):
    cfg, sample, _ = inductive_run
    run_infer(spark, cfg)
    new = new_items.read(cfg.run_dir, sample.versions["split"])
    data = load_eval_data(cfg.run_dir, kind="test")
    assert len(data.targets) > 0 and np.isin(data.targets, new).all()

    result = run_evaluate(cfg)
    m = result.metrics
    assert set(m["methods"]) == {"popularity", "item_knn", "pinsage", "pinsage_retrained"}
    assert m["num_queries"] == len(data.targets)
    assert m["vs_best_baseline"]["baseline"] in ("popularity", "item_knn")
    hit = m["methods"]["pinsage"]["hit_rate@5"]
    bound = m["methods"]["pinsage_retrained"]["hit_rate@5"]
    assert m["inductive_ratio"] == (pytest.approx(hit / bound) if bound else None)
    assert m["new_items"] == len(new)
    # The model's manifest names its TensorBoard run, which the report plots.
    assert "training_curves" not in m["notes"]
    assert (versioned.resolve(cfg.run_dir, "eval", result.version) / "report" /
            "training_curves.png").stat().st_size > 0
    # The retrained model is a real model on the run's own minibatches, beside the run.
    retrained = versioned.read_manifest(str(Path(cfg.run_dir) / "_compare" / "retrained"), "model",
                                        m["versions"]["model_retrained"])
    assert retrained["inputs"]["batches"] == sample.versions["batches"]
