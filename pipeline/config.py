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
    # Readable item names for the report's examples (CSV or Parquet); ids otherwise.
    names_path: Optional[str] = None
    names_id_col: str = "id"
    names_col: str = "name"


@dataclass
class IngestConfig:
    # fail: stop with a clear error; quarantine: move bad rows to a side table.
    on_bad_rows: str = "fail"


@dataclass
class SampleConfig:
    walk_length: int = 3             # L: hops of the walks whose expected visits rank neighbours
    restart_prob: float = 0.5        # α: a walk stops before each hop with this probability
    push_threshold: float = 1e-4     # ε: pass mass on while mass/deg >= ε/deg(start); 0 = exact
    degree_exponent: float = 0.7     # β: score = expected visits / degree^β; tuned on validation
    quality_sample: int = 200        # items whose neighbourhoods are checked (manifest "quality")
    num_neighbors: int = 10          # T
    mode: str = "memory"             # memory | join
    partitions: int = 0              # start-node partitions; 0 = 2 x Spark's default parallelism
    pair_window: int = 3             # tuned on validation (1 -> 3)
    repeat_pairs: bool = True        # a pair co-engaged by n users is n examples; tuned: on
    hard_window: List[float] = field(default_factory=lambda: [0.02, 0.1])
    num_hard: int = 6                # hard candidates per query; only if train.max_hard_negatives > 0
    easy_negatives: int = 2000       # easy-negative draws stored per minibatch (a pool; README)
    negative_power: float = 0.75     # draws in proportion to (positives + 1)^this; 0 = uniform
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
    head_layers: int = 0             # dense layers after the last conv (2: the paper's); tuned: 0
    item_bias: bool = True           # learned query shift u: score = cos(q, c) + u.z_c (popularity)


@dataclass
class TrainConfig:
    epochs: int = 2                  # tuned on validation with lr (5 x 0.001 -> 2 x 0.003)
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"         # cosine | constant
    loss: str = "softmax"            # softmax (sampled, logQ-corrected) | max_margin (PinSage's)
    temperature: float = 0.1         # softmax: logits are cosine / temperature (initial value)
    learn_temperature: bool = False  # softmax: learn the temperature with the model (capped 0.01)
    margin: float = 0.1              # max_margin
    easy_negatives: int = 500        # drawn per minibatch and epoch from its stored pool
    max_hard_negatives: int = 0      # epoch n uses min(n - 1, this); 0: hurt on MovieLens (README)
    prefetch: int = 4                # queue depth per producer; 0 = synchronous loading
    num_workers: int = 1             # producer threads
    checkpoint_every: int = 50       # steps; checkpoints also at every epoch end
    resume: bool = False             # continue from the latest checkpoint of this run
    device: str = "auto"             # auto (cuda when available) | cpu | cuda
    val_k: int = 10                  # validation hit-rate@k on the split's validation pairs
    # model.item_bias: scales of the learned query shift tried on the validation rows after
    # training; the one with the best validation MRR is published (0 = no popularity prior)
    bias_scales: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass
class InferConfig:
    partitions: int = 0              # reduce partitions per layer; 0 = auto (see README)
    batch_rows: int = 65536          # rows per Arrow batch handed to PyTorch
    message_dtype: str = "float32"   # float32 (exact) | float16 | bfloat16 (half the shuffle)


@dataclass
class EvalConfig:
    protocol: str = "leave_last_out"  # leave_last_out | random_edges | new_items (inductive)
    holdout_fraction: float = 0.1    # random_edges: edges held out (half validation, half test)
    new_item_fraction: float = 0.1   # new_items: share of the eligible items the model never sees
    new_item_min_degree: int = 5     # new_items: eligible items have this many training edges
    ks: List[int] = field(default_factory=lambda: [10, 50, 100])
    kind: str = "test"               # held-out rows scored: test | validation (for tuning)
    max_queries: int = 0             # > 0: a seeded sample of that many held-out pairs
    bootstrap: int = 1000            # resamples of the queries for the 95% CIs
    baselines: List[str] = field(default_factory=lambda: [
        "popularity", "random_walk", "item_knn", "als", "ease", "node2vec", "lightgcn",
        "features_only"])
    item_knn_similarity: str = "bm25"  # item_knn: cosine | tfidf | bm25 (implicit)
    item_knn_bm25_b: float = 1.0     # bm25: length normalisation by item degree, 0..1
    als_factors: int = 32            # tuned on validation (64 -> 32)
    als_iterations: int = 15
    als_regularization: float = 0.01
    ease_lambda: float = 10.0        # ease: λ as a multiple of the mean diagonal of X^T X
    ease_max_items: int = 30_000     # ease: skipped (with a note) above this many items
    node2vec_dim: int = 64           # node2vec: skip-gram vector size
    node2vec_walks: int = 10         # walks from every item
    node2vec_walk_length: int = 40   # hops per walk (item -> user -> item is one hop)
    node2vec_window: int = 1         # skip-gram context window, in items
    node2vec_epochs: int = 5
    node2vec_max_tokens: int = 20_000_000  # epochs, then walks, cut to train at most this many
    lightgcn_dim: int = 128          # lightgcn: embedding size
    lightgcn_layers: int = 2
    lightgcn_epochs: int = 10        # passes over the training edges (BPR)
    lightgcn_lr: float = 0.05        # Adam
    lightgcn_batch_size: int = 8192
    lightgcn_max_steps: int = 200    # minibatches at most (each propagates the whole graph)
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
    examples: int = 8                # held-out queries shown with their top-10 in report.html


@dataclass
class AblateConfig:
    kind: str = "validation"         # held-out rows scored (tuning never looks at test)
    # Row name -> overrides of sample.*, model.* or train.* (conf/ablate/default.yaml lists them).
    rows: Dict[str, List[str]] = field(default_factory=dict)


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
    ablate: AblateConfig = field(default_factory=AblateConfig)
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
