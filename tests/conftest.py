"""Shared fixtures: one local[2] Spark session for the whole run, Hydra composition."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from pipeline.config import CONF_DIR
from pipeline.spark import build_spark


@pytest.fixture(scope="session")
def spark():
    session = build_spark("local[2]", {"spark.sql.shuffle.partitions": "4",
                                       "spark.default.parallelism": "4"},
                          app_name="pinsage-tests")
    yield session
    session.stop()


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the real config the way the jobs do, with ``run_dir`` in a temp dir."""
    def _make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"run_dir={tmp_path / 'run'}", *overrides])
    return _make
