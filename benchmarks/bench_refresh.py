"""Scheduled refresh: an incremental refresh against a full one, on the same change.

  1. the ratings go to a CSV (``data=edges``; for MovieLens-100K the movie
     features to Parquet), and ``python jobs/refresh.py refresh.retrain=true``
     publishes release 1;
  2. the run directory is copied, and the CSV loses ``--changes`` ratings and
     gains as many new ones, each a user rating an item that a user who shares
     an item with them rated (a local change);
  3. ``python jobs/refresh.py`` publishes release 2 incrementally (the model
     of release 1; neighbourhoods and embeddings reused where nothing
     changed), and ``python jobs/refresh.py refresh.incremental=false``
     refreshes the copy in full;
  4. both releases' neighbourhoods and embeddings are compared bit for bit.

Each refresh is a separate process timed end to end, as cron would run it.
The last line is ``incremental_refresh_speedup=<full / incremental seconds>``.

    .venv/bin/python benchmarks/bench_refresh.py                 # MovieLens-100K, 20 + 20 ratings
    .venv/bin/python benchmarks/bench_refresh.py --dataset communities   # 24,000 items, sparse

``communities``: ``--communities`` groups of 12 items and 6 users, each user
rating 4 items of their group: the sparse, clustered case where walks from
most items never reach a change. On MovieLens-100K (943 users with 106
ratings each on average) a 3-hop walk from any movie reaches almost every
user, so almost every neighbourhood can change.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import DataConfig  # noqa: E402
from pipeline.ingest.sources import read_movielens100k  # noqa: E402
from pipeline.io import versioned  # noqa: E402
from pipeline.io.manifests import ReleaseManifest  # noqa: E402
from pipeline.spark import build_spark  # noqa: E402


def export_movielens(work: Path) -> tuple[Path, Path]:
    """MovieLens-100K as a ratings CSV and a features Parquet file for ``data=edges``."""
    spark = build_spark("local[2]", app_name="bench-refresh-export")
    try:
        raw = read_movielens100k(spark, DataConfig(name="movielens100k", source="movielens100k",
                                                   src_col="user_id", dst_col="item_id",
                                                   time_col="timestamp"))
        edges = raw.edges.select("user_id", "item_id", "timestamp").toPandas()
        feats = raw.features.select("id", "features").toPandas()
    finally:
        spark.stop()
    csv, parquet = work / "ratings.csv", work / "features.parquet"
    edges.to_csv(csv, index=False)
    pq.write_table(pa.table({"id": feats["id"].astype(str),
                             "features": pa.array(feats["features"].tolist(),
                                                  pa.list_(pa.float64()))}), parquet)
    return csv, parquet


def communities(work: Path, n: int, seed: int) -> Path:
    """``n`` groups of 12 items and 6 users; each user rates 4 items of their group."""
    g = np.random.default_rng(seed)
    rows = [(f"u{c}_{u}", f"i{c}_{i}", 0) for c in range(n) for u in range(6)
            for i in g.choice(12, size=4, replace=False)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["timestamp"] = np.arange(len(df))
    csv = work / "ratings.csv"
    df.to_csv(csv, index=False)
    return csv


def change(csv: Path, n: int, seed: int) -> None:
    """Remove ``n`` random ratings; add ``n`` new local ones after the latest timestamp."""
    df = pd.read_csv(csv, dtype={"user_id": str, "item_id": str})
    g = np.random.default_rng(seed)
    kept = df.drop(index=g.choice(len(df), size=n, replace=False))
    rated = set(zip(df.user_id, df.item_id))
    raters = df.groupby("item_id").user_id.apply(list).to_dict()
    rated_by = df.groupby("user_id").item_id.apply(list).to_dict()
    new, t = [], int(df.timestamp.max())
    while len(new) < n:
        u, i0 = df.iloc[int(g.integers(len(df)))][["user_id", "item_id"]]
        other = raters[i0][int(g.integers(len(raters[i0])))]
        i = rated_by[other][int(g.integers(len(rated_by[other])))]
        if (u, i) not in rated:
            rated.add((u, i))
            t += 1
            new.append((u, i, t))
    pd.concat([kept, pd.DataFrame(new, columns=df.columns)]).to_csv(csv, index=False)


def refresh(run_dir: Path, args: list[str], what: str) -> tuple[float, ReleaseManifest]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "jobs/refresh.py", f"run_dir={run_dir}", *args],
                         cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{what} refresh failed ({out.returncode}):\n{out.stderr[-3000:]}")
    print(f"{what}: {out.stdout.strip().splitlines()[-1]} ({seconds:.1f}s wall)", flush=True)
    return seconds, ReleaseManifest.read(run_dir)


def table(run_dir: Path, stage: str, version: str, name: str) -> pa.Table:
    return pq.read_table(versioned.resolve(run_dir, stage, version) / name).sort_by("node")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("movielens", "communities"), default="movielens")
    p.add_argument("--communities", type=int, default=2000)
    p.add_argument("--changes", type=int, default=20, help="ratings removed, and as many added")
    p.add_argument("--epochs", type=int, default=5, help="training epochs for release 1")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
        work = Path(tmp)
        data = ["data=edges", "data.src_col=user_id", "data.dst_col=item_id",
                "data.time_col=timestamp", f"seed={a.seed}"]
        if a.dataset == "movielens":
            csv, features = export_movielens(work)
            data += [f"data.path={csv}", f"data.features_path={features}"]
        else:
            csv = communities(work, a.communities, a.seed)
            data += [f"data.path={csv}"]
        inc_dir, full_dir = work / "incremental", work / "full"
        refresh(inc_dir, [*data, "refresh.retrain=true", f"train.epochs={a.epochs}"], "release 1")
        shutil.copytree(inc_dir, full_dir)
        change(csv, a.changes, a.seed)
        print(f"source: {a.changes} ratings removed, {a.changes} added", flush=True)
        t_inc, inc = refresh(inc_dir, data, "incremental")
        t_full, full = refresh(full_dir, [*data, "refresh.incremental=false"], "full")
        for stage, names in (("neighbors", ("neighbors", "hard_candidates")),
                             ("embeddings", ("embeddings",))):
            for name in names:
                same = table(inc_dir, stage, inc.versions[stage], name).equals(
                    table(full_dir, stage, full.versions[stage], name))
                print(f"{stage}/{name}: incremental == full: {same}")
                if not same:
                    sys.exit(f"{stage}/{name} differs between the incremental and the full refresh")
        print("incremental counts:", json.dumps({k: inc.counts[k] for k in
                                                 ("neighbors", "embeddings", "seconds")}))
        print("full counts:", json.dumps({k: full.counts[k] for k in
                                          ("neighbors", "embeddings", "seconds")}))
        for stage in ("neighbors", "embeddings"):
            secs = [versioned.read_manifest(d, stage, r.versions[stage])["counts"]["seconds"]
                    for d, r in ((inc_dir, inc), (full_dir, full))]
            print(f"{stage} stage: incremental {secs[0]:.1f}s, full {secs[1]:.1f}s")
        print(f"hit_rate@10: incremental {inc.metrics['hit_rate@10']:.4f}, "
              f"full {full.metrics['hit_rate@10']:.4f}")
        print(f"incremental_refresh_speedup={t_full / t_inc:.2f}")


if __name__ == "__main__":
    main()
