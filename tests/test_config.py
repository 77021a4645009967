"""Hydra composition: typed schema, groups, overrides."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from pipeline.config import CONF_DIR
from pipeline.spark import flatten_conf


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


def test_flatten_conf_mixes_dotted_and_nested_keys():
    assert flatten_conf({"spark.driver.memory": "2g", "spark": {"ui": {"enabled": False}}}) == \
        {"spark.driver.memory": "2g", "spark.ui.enabled": "false"}


def test_edges_requires_a_path(spark, make_cfg):
    from pipeline.errors import IngestError
    from pipeline.ingest import run_ingest
    with pytest.raises(IngestError, match="^data.path is not set$"):
        run_ingest(spark, make_cfg("data=edges"))
