"""Hydra composition: typed schema, groups, overrides."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from pipeline import cli, config
from pipeline.config import CONF_DIR, InferConfig, ModelConfig, SplitConfig
from pipeline.errors import PipelineError
from pipeline.infer.kernels import MESSAGE_DTYPES
from pipeline.model import AGGREGATORS, ID_EMBEDDINGS
from pipeline.split.protocols import PROTOCOLS
from pipeline.spark import flatten_conf

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(make_cfg, tmp_path):
    cfg = make_cfg()
    assert cfg.data.name == "movielens100k" and cfg.data.source == "movielens100k"
    assert cfg.run_dir == str(tmp_path / "run")
    assert cfg.seed == 0 and cfg.spark.master == "local[*]" and cfg.spark.conf == {}
    assert cfg.model.aggregator == "importance" and cfg.eval.ks == [10, 50, 100]


def test_every_concern_has_a_group():
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert {"data", "sample", "model", "train", "infer", "eval", "spark"} <= groups


def test_run_dir_defaults_to_dataset_name():
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data=edges", "data.path=x.csv"])
    assert cfg.run_dir == "runs/edges"


def test_overrides_and_spark_conf_map(make_cfg):
    cfg = make_cfg("data=edges", "data.path=g.parquet", "data.format=parquet",
                   "data.bipartite=false", "seed=7",
                   "++spark.conf.spark.sql.shuffle.partitions=8")
    assert (cfg.data.path, cfg.data.format, cfg.data.bipartite, cfg.seed) == \
        ("g.parquet", "parquet", False, 7)
    # Dots in the key nest in Hydra; the session builder flattens them back.
    assert flatten_conf(OmegaConf.to_container(cfg.spark.conf)) == \
        {"spark.sql.shuffle.partitions": "8"}


def test_types_are_checked(make_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("sample.walk_length=many")
    assert isinstance(err.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException):
        make_cfg("data.no_such_key=1")


def test_a_choice_outside_its_type_fails_while_composing(make_cfg):
    """Choices are the fields' types: no value outside them reaches a stage."""
    for override, allowed in [("sample.mode=disk", "memory, join"),
                              ("data.format=xlsx", "csv, parquet"),
                              ("ingest.on_bad_rows=drop", "fail, quarantine"),
                              ("eval.kind=train", "validation, test")]:
        with pytest.raises(ConfigCompositionException) as err:
            make_cfg(override)
        assert isinstance(err.value.__cause__, ValidationError)
        value = override.split("=")[1]
        assert cli.override_problem([override]) == (
            f"Error merging override {override}; Invalid value '{value}', expected one of "
            f"[{allowed}]")
    # A chosen value is the string itself wherever code compares or looks it up.
    cfg = make_cfg("model.aggregator=mean")
    assert cfg.model.aggregator == "mean" and {"mean": 1}[cfg.model.aggregator] == 1
    assert f"{cfg.model.aggregator}" == str(cfg.model.aggregator) == "mean"


def test_check_enforces_the_declared_bounds(make_cfg):
    config.check(make_cfg())                       # the defaults keep every rule
    for override, msg in [
            ("sample.walk_length=65", "sample.walk_length must be in [1, 64], got 65"),
            ("sample.restart_prob=1", "sample.restart_prob must be in [0, 1), got 1.0"),
            ("split.holdout_fraction=0", "split.holdout_fraction must be in (0, 1), got 0.0"),
            ("eval.item_knn_bm25_b=1.5", "eval.item_knn_bm25_b must be in [0, 1], got 1.5"),
            ("train.temperature=0", "train.temperature must be > 0, got 0.0"),
            ("infer.batch_rows=0", "infer.batch_rows must be >= 1, got 0")]:
        with pytest.raises(PipelineError) as err:
            config.check(make_cfg(override))
        assert str(err.value) == msg
    config.check(make_cfg("train.temperature=0"), "sample", "eval")   # only the groups named


def test_declared_choices_are_the_ones_the_code_dispatches_on():
    assert config.choices(ModelConfig, "aggregator") == AGGREGATORS
    assert config.choices(ModelConfig, "id_embedding") == ID_EMBEDDINGS
    assert config.choices(InferConfig, "message_dtype") == tuple(MESSAGE_DTYPES)
    assert set(config.choices(SplitConfig, "protocol")) == {*PROTOCOLS, "new_items"}


def test_a_job_checks_every_group_before_it_starts(tmp_path):
    """A bad setting of a later stage stops the first job at once: one line, exit 2."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "jobs/ingest.py", f"run_dir={run_dir}",
                           "eval.index_nprobe=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: eval.index_nprobe must be >= 1, got 0"
    assert not (run_dir / "graph").exists()


def test_flatten_conf_mixes_dotted_and_nested_keys():
    assert flatten_conf({"spark.driver.memory": "2g", "spark": {"ui": {"enabled": False}}}) == \
        {"spark.driver.memory": "2g", "spark.ui.enabled": "false"}


def test_edges_requires_a_path(spark, make_cfg):
    from pipeline.errors import IngestError
    from pipeline.ingest import run_ingest
    with pytest.raises(IngestError, match="^data.path is not set$"):
        run_ingest(spark, make_cfg("data=edges"))
