"""Typed configuration, registered in Hydra's ConfigStore.

Every job composes ``conf/config.yaml``; its defaults list starts from the
``base_config`` schema stored here, so every YAML group file is validated
against these dataclasses (a typo or a wrong type fails at start-up, not
halfway through a Spark job).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class SparkConfig:
    # Ignored under spark-submit, where the submitter's master wins.
    master: str = "local[*]"
    # Spark properties handed to the builder, e.g.
    # ++spark.conf.spark.sql.shuffle.partitions=8
    conf: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = MISSING
    # movielens100k: the bundled real dataset; edges: a user's edge list.
    source: str = MISSING
    path: Optional[str] = None
    format: str = "csv"
    src_col: str = "src"
    dst_col: str = "dst"
    time_col: Optional[str] = None
    weight_col: Optional[str] = None
    bipartite: bool = True
    features_path: Optional[str] = None
    features_id_col: str = "id"


@dataclass
class IngestConfig:
    # fail: stop with a clear error; quarantine: move bad rows to a side table.
    on_bad_rows: str = "fail"


@dataclass
class SampleConfig:
    num_walks: int = 200
    walk_length: int = 3
    restart_prob: float = 0.5
    num_neighbors: int = 10          # T
    mode: str = "memory"             # memory | join
    partitions: int = 0              # start-node partitions; 0 = 2 x Spark's default parallelism
    pair_window: int = 3             # tuned on validation (1 -> 3)
    pairs_per_item: int = 3          # walk co-occurrence pairs when there are no times
    hard_window: List[float] = field(default_factory=lambda: [0.02, 0.1])
    num_hard: int = 6                # hard-negative candidates kept per query
    easy_negatives: int = 500        # shared easy negatives stored with each minibatch
    val_fraction: float = 0.05       # pairs whose minibatches are for validation
    batch_size: int = 512
    batches_per_file: int = 16


@dataclass
class ModelConfig:
    num_layers: int = 2
    hidden_dim: int = 128            # tuned on validation (64 -> 128)
    aggregator: str = "importance"
    id_embedding: str = "on"
    id_buckets: int = 100_000


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"         # cosine | constant
    margin: float = 0.1
    easy_negatives: int = 500        # used per minibatch, at most what sampling stored
    max_hard_negatives: int = 0      # epoch n uses min(n - 1, this); 0: hurt on MovieLens (README)
    prefetch: int = 4                # queue depth per producer; 0 = synchronous loading
    num_workers: int = 1             # producer threads
    checkpoint_every: int = 50       # steps; checkpoints also at every epoch end
    resume: bool = False             # continue from the latest checkpoint of this run
    device: str = "auto"             # auto (cuda when available) | cpu | cuda
    val_k: int = 10                  # validation hit-rate@k on the split's validation pairs


@dataclass
class InferConfig:
    partitions: int = 0              # reduce partitions per layer; 0 = auto (see README)
    batch_rows: int = 65536          # rows per Arrow batch handed to PyTorch
    message_dtype: str = "float32"   # float32 (exact) | float16 | bfloat16 (half the shuffle)


@dataclass
class EvalConfig:
    protocol: str = "leave_last_out"
    holdout_fraction: float = 0.1    # random_edges: edges held out (half validation, half test)
    ks: List[int] = field(default_factory=lambda: [10, 50, 100])
    kind: str = "test"               # held-out rows scored: test | validation (for tuning)
    max_queries: int = 0             # > 0: a seeded sample of that many held-out pairs
    bootstrap: int = 1000            # resamples of the queries for the 95% CIs
    baselines: List[str] = field(default_factory=lambda: [
        "popularity", "random_walk", "item_knn", "als", "features_only"])
    rw_walks: int = 2000             # random_walk: walks from each query (Pixie-style)
    rw_walk_length: int = 3
    rw_restart_prob: float = 0.5
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.01
    compare_aggregators: bool = False  # train one extra model per other aggregator
    aggregators: List[str] = field(default_factory=lambda: [
        "importance", "mean", "max", "gatv2", "gated"])
    index: str = "hnsw"              # serving index: hnsw | ivf
    index_m: int = 32                # hnsw: links per node
    index_ef_construction: int = 200
    index_ef_search: int = 128
    index_nlist: int = 0             # ivf: cells; 0 = about 4 sqrt(items)
    index_nprobe: int = 16           # ivf: cells searched per query
    map_items: int = 3000            # items drawn for the t-SNE map


@dataclass
class RefreshConfig:
    retrain: bool = False            # train a new model instead of inferring with the latest one
    incremental: bool = True         # re-walk only items a changed edge can reach
    max_regression: float = 0.02     # largest drop in hit-rate@10 below the current release
    keep_versions: int = 3           # releases kept (and every stage version they use)
    rollback: bool = False           # point the release back to the previous one, then stop


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    run_dir: str = "runs/${data.name}"
    seed: int = 0
    # How many published versions of each stage to keep on disk.
    keep_versions: int = 3
    # Re-run a stage even when its inputs and config match the latest version.
    force: bool = False


def register() -> None:
    """Store the schema; idempotent, so tests and jobs can both call it."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


register()
