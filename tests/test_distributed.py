"""Join mode never gathers the graph on the driver: the chain runs under a tiny result limit.

``spark.driver.maxResultSize`` bounds what tasks may send the driver, and it
cannot change once a SparkContext runs, so the chain (ingest, split,
neighbours, pairs, batches, inference, then an incremental sampling and an
incremental inference after the graph changed) runs in a subprocess whose
session allows 1 MB, a third of the neighbour table: any collect of
a graph-sized table fails the job. Broadcast joins collect their small side
through the same limit and Spark picks one for any side it estimates under
10 MB, which a real graph's tables never are; the subprocess turns them off,
as it shrinks the limit, to keep the test's graph small.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pyarrow.dataset as ds
import torch
from hydra import compose, initialize_config_dir

from pipeline.config import CONF_DIR
from pipeline.infer import run_infer
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.io.manifests import GraphManifest, ModelManifest
from pipeline.model import build_model
from pipeline.sampling import run_sample
from pipeline.spark import build_spark

LIMIT = "1m"
ITEMS, USERS, PER_USER, T = 8_000, 4_000, 12, 40


def _graph(path: Path, extra_users: int = 0) -> None:
    """``ITEMS`` items, each user engaging ``PER_USER`` of them; ``extra_users`` more users
    engage some items and three new ones (the changed graph)."""
    g = np.random.default_rng(0)
    users = np.repeat(np.arange(USERS), PER_USER)
    items = g.integers(0, ITEMS, len(users))
    rows = pd.DataFrame({"u": [f"u{u}" for u in users], "i": [f"i{i}" for i in items],
                         "t": np.arange(len(users))})
    more = pd.DataFrame({"u": [f"x{k}" for k in range(extra_users) for _ in range(2)],
                         "i": [f"i{v}" for k in range(extra_users)
                               for v in (k * 97 % ITEMS, ITEMS + k % 3)],
                         "t": len(users) + np.arange(2 * extra_users)})
    pd.concat([rows, more]).to_csv(path, index=False)


def _features(path: Path) -> None:
    g = np.random.default_rng(1)
    pd.DataFrame({"id": [f"i{i}" for i in range(ITEMS + 3)],
                  **{f"f{k}": g.normal(size=ITEMS + 3) for k in range(3)}}).to_parquet(path)


def chain(work: str) -> dict:
    """Run the chain on a session that lets tasks send the driver at most ``LIMIT``."""
    work_dir = Path(work)
    src, feats = work_dir / "edges.csv", work_dir / "features.parquet"
    _graph(src)
    _features(feats)
    spark = build_spark("local[2]", {"spark.driver.maxResultSize": LIMIT,
                                     "spark.sql.autoBroadcastJoinThreshold": "-1",
                                     "spark.sql.shuffle.partitions": "4",
                                     "spark.default.parallelism": "4"})
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"run_dir={work_dir / 'run'}", "data=edges", f"data.path={src}", "data.src_col=u",
            "data.dst_col=i", "data.time_col=t", f"data.features_path={feats}",
            "sample.mode=join", "sample.walk_length=1", "sample.push_threshold=0",
            f"sample.num_neighbors={T}", "sample.quality_sample=20", "sample.pair_window=1",
            "sample.repeat_pairs=false", "sample.batch_size=2048", "sample.easy_negatives=20",
            "sample.hard_window=[0,0]", "model.hidden_dim=8", "model.num_layers=2"])
    run_ingest(spark, cfg)
    first = run_sample(spark, cfg)
    graph = GraphManifest.read(cfg.run_dir)
    torch.manual_seed(0)
    model = build_model(cfg.model, graph.feature_dim, graph.n_items)
    with versioned.publish(cfg.run_dir, "model", "random") as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest.update(ModelManifest.for_config(
            cfg.model, graph.feature_dim, graph.n_items, cfg.sample.num_neighbors).entries())
    embedded = run_infer(spark, cfg)
    _graph(src, extra_users=5)
    run_ingest(spark, cfg)
    again = run_sample(spark, cfg, neighbors_from=first.versions["neighbors"], training=False)
    refreshed = run_infer(spark, cfg, embeddings_from=embedded.version)
    nb_bytes = ds.dataset(str(versioned.resolve(cfg.run_dir, "neighbors") / "neighbors"),
                          format="parquet").to_table().nbytes
    spark.stop()
    return {"items": graph.n_items, "neighbors_bytes": nb_bytes,
            "batches": first.counts["batches"], "neighbors": again.counts["neighbors"],
            "embeddings": refreshed.counts}


@pytest.mark.slow
def test_join_mode_chain_runs_under_a_tiny_driver_result_limit(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The neighbour table (in Arrow, as a collect would ship it) is several times the limit.
    assert out["neighbors_bytes"] > 3 * 2 ** 20
    assert out["batches"]["train_batches"] > 0
    nb, emb = out["neighbors"], out["embeddings"]
    assert nb["reused_items"] > 0 and 0 < nb["recomputed_items"] < nb["items"]
    assert emb["reused_items"] > 0 and 0 < emb["recomputed_items"] < emb["items"]


if __name__ == "__main__":
    print(json.dumps(chain(sys.argv[1])))
