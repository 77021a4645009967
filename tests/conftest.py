"""Shared fixtures: one local[2] Spark session for the whole run, Hydra composition."""
from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from pipeline.config import CONF_DIR
from pipeline.spark import build_spark

# Every JVM the tests start (this session's, the jobs' subprocesses, the cluster's) is
# short-lived and works on tiny data: the C1 compiler alone and the serial collector
# halve its CPU time (JIT and GC threads), which is what bounds the suite on 2 cores.
os.environ.setdefault("JDK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


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


@pytest.fixture(scope="session")
def ml(spark, tmp_path_factory):
    """MovieLens-100K ingested and sampled once for the whole run: ``(cfg, SampleResult)``."""
    from pipeline.ingest import run_ingest
    from pipeline.sampling import run_sample
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Pinned: these tests check pairs of consecutive items and the hard-negative
        # curriculum, whatever the tuned defaults (pair_window 3, no hard negatives).
        cfg = compose("config", overrides=[f"run_dir={tmp_path_factory.mktemp('ml')}",
                                           "sample.pair_window=1", "train.epochs=3",
                                           "train.max_hard_negatives=3"])
    run_ingest(spark, cfg)
    return cfg, run_sample(spark, cfg)
