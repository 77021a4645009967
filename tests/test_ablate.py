"""The ablation job: rows trained beside the run, deduplicated, scored on validation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.ablate import run_ablate
from pipeline.config import CONF_DIR
from pipeline.errors import PipelineError
from pipeline.evaluate.data import load as load_eval_data
from pipeline.ingest import run_ingest
from pipeline.io import versioned
from pipeline.sampling import run_sample


def _graph(path: Path, n_users=40, n_items=30, per_user=8, seed=3) -> Path:
    g = np.random.default_rng(seed)
    lines = ["user,item,ts"]
    for u in range(n_users):
        for t, i in enumerate(g.choice(n_items, size=per_user, replace=False)):
            lines.append(f"u{u},i{i},{100 * u + t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ablation_rows_beside_the_run(spark, tmp_path):
    path = _graph(tmp_path / "edges.csv")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"run_dir={tmp_path / 'run'}", "data=edges", f"data.path={path}", "data.src_col=user",
            "data.dst_col=item", "data.time_col=ts", "sample.batch_size=32",
            "sample.easy_negatives=8", "train.epochs=1", "model.hidden_dim=8", "eval.ks=[5]",
            "eval.bootstrap=50"])
    OmegaConf.update(cfg, "ablate.rows", {"same": ["model.hidden_dim=8"],
                                          "mean": ["model.aggregator=mean"],
                                          "T3": ["sample.num_neighbors=3"]}, merge=False)
    run_ingest(spark, cfg)
    sample = run_sample(spark, cfg)
    result = run_ablate(spark, cfg)
    m = result.metrics
    assert list(m["methods"]) == ["defaults", "same", "mean", "T3"]
    assert m["same_as"] == {"same": "defaults"}          # equal settings are trained once
    assert m["methods"]["same"] == m["methods"]["defaults"]
    # Paired differences from the defaults: the difference of the means, inside its own CI.
    assert set(m["vs_defaults"]) == {"mean", "T3"}
    for row, d in m["vs_defaults"].items():
        for metric, value in d["difference"].items():
            assert value == pytest.approx(m["methods"][row][metric] - m["methods"]["defaults"][metric])
            lo, hi = d["ci95"][metric]
            assert lo <= value <= hi
    assert m["num_queries"] == len(load_eval_data(cfg.run_dir, kind="validation").queries)
    root = Path(cfg.run_dir) / "_ablate"
    mean = versioned.read_manifest(str(root / "mean"), "model", m["models"]["mean"])
    assert mean["model"]["aggregator"] == "mean"
    t3 = versioned.read_manifest(str(root / "T3"), "neighbors")
    assert t3["config"]["num_neighbors"] == 3
    # Rows share the run's graph and split; the run's own stages are untouched.
    assert (root / "T3" / "split").resolve() == (Path(cfg.run_dir) / "split").resolve()
    assert versioned.latest_version(cfg.run_dir, "neighbors") == sample.versions["neighbors"]
    assert not (Path(cfg.run_dir) / "model").exists()
    out = versioned.resolve(cfg.run_dir, "ablation", result.version)
    assert json.loads((out / "ablation.json").read_text())["methods"] == m["methods"]
    assert (out / "ablation.png").stat().st_size > 0
    assert "| T3 |" in (out / "ablation.md").read_text()
    assert "| row - defaults |" in (out / "ablation.md").read_text()
    assert run_ablate(spark, cfg).reused

    with pytest.raises(PipelineError, match="may only set"):
        OmegaConf.update(cfg, "ablate.rows", {"bad": ["eval.kind=test"]}, merge=False)
        run_ablate(spark, cfg)
    with pytest.raises(PipelineError, match=r"^ablate.rows.bad: sample.num_neighbors must be >= 1, "
                                            r"got 0$"):
        OmegaConf.update(cfg, "ablate.rows", {"ok": ["sample.num_neighbors=3"],
                                              "bad": ["sample.num_neighbors=0"]}, merge=False)
        run_ablate(spark, cfg)
