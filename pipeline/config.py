"""Typed configuration, registered in Hydra's ConfigStore.

Every job composes ``conf/config.yaml``; its defaults list starts from the
``base_config`` schema stored here, so every YAML group file is validated
against these dataclasses (a typo or a wrong type fails at start-up, not
halfway through a Spark job).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from enum import StrEnum
from typing import Any, Dict, List, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.errors import PipelineError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Walk scores are fixed-point sums of at most L visits of 2**SCALE_BITS each, below 2**63
# (pipeline/sampling/ppr.py).
MAX_WALK_LENGTH = 64


# Keys that moved, old -> new: a command line that names the old key still runs
# (pipeline/cli.py rewrites it, with a notice), so scripts written for an earlier
# release keep working.
RENAMED = {f"eval.{k}": f"split.{k}"
           for k in ("protocol", "holdout_fraction", "new_item_fraction", "new_item_min_degree")}


def _choice(name: str, *values: str) -> type[StrEnum]:
    """A setting's allowed values as its type: OmegaConf refuses any other value while composing
    (pipeline/cli.py makes that one line and exit 2). Members are the strings themselves
    (``StrEnum``), so code compares them, looks them up and writes them like plain strings."""
    return StrEnum(name, [(v, v) for v in values], module=__name__)


Source = _choice("Source", "movielens100k", "edges")
Format = _choice("Format", "csv", "parquet")
OnBadRows = _choice("OnBadRows", "fail", "quarantine")
SampleMode = _choice("SampleMode", "memory", "join")
Aggregator = _choice("Aggregator", "importance", "mean", "max", "gatv2", "gated")
IdEmbedding = _choice("IdEmbedding", "on", "off", "hashed")
Schedule = _choice("Schedule", "cosine", "constant")
Loss = _choice("Loss", "softmax", "max_margin")
Device = _choice("Device", "auto", "cpu", "cuda")
MessageDtype = _choice("MessageDtype", "float32", "float16", "bfloat16")
Protocol = _choice("Protocol", "leave_last_out", "random_edges", "new_items")
HeldOut = _choice("HeldOut", "validation", "test")
ItemKnnSimilarity = _choice("ItemKnnSimilarity", "cosine", "tfidf", "bm25")
IndexType = _choice("IndexType", "hnsw", "ivf")


def setting(default: Any, help: str, *, at_least: float | None = None,
            above: float | None = None, at_most: float | None = None,
            below: float | None = None) -> Any:
    """A field with its one-line description and its bounds.

    ``python jobs/<job>.py --help`` prints ``help`` beside the key and its
    default from the composed config (pipeline/cli.py); :func:`check` enforces
    the bounds, and a field's choices are its type (:func:`_choice`), so each
    is written once, here. A list or dict default is copied for every instance.
    """
    metadata = {"help": help, "bounds": (at_least, above, at_most, below)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def group(schema: type, help: str) -> Any:
    """A config group (``conf/<name>/``) of schema ``schema``, with its description."""
    return field(default_factory=schema, metadata={"help": help})


@dataclass
class SparkConfig:
    master: str = setting("local[*]", "Spark master; ignored under spark-submit, where the "
                                      "submitter's master wins")
    conf: Dict[str, Any] = setting({}, "Spark properties handed to the session builder, e.g. "
                                       "++spark.conf.spark.sql.shuffle.partitions=8")


@dataclass
class DataConfig:
    name: str = setting(MISSING, "dataset name; names the run directory (run_dir)")
    source: Source = setting(MISSING, "movielens100k: the bundled real dataset | edges: your "
                                      "edge list at data.path")
    path: Optional[str] = setting(None, "edges: a CSV/Parquet file or a directory of them "
                                        "(required)")
    format: Format = setting(Format.csv, "format of data.path: csv | parquet")
    src_col: str = setting("src", "source column of the edge list (users/boards when bipartite)")
    dst_col: str = setting("dst", "destination column of the edge list (the items when "
                                  "bipartite)")
    time_col: Optional[str] = setting(None, "optional column of integer edge times (e.g. unix "
                                            "seconds); leave_last_out needs it")
    weight_col: Optional[str] = setting(None, "optional column of non-negative numeric edge "
                                              "weights")
    bipartite: bool = setting(True, "true: src are users/boards, dst are the items that get "
                                    "embeddings")
    features_path: Optional[str] = setting(None, "optional Parquet of item features: an id "
                                                 "column plus a numeric vector or numeric columns")
    features_id_col: str = setting("id", "id column of data.features_path")
    names_path: Optional[str] = setting(None, "optional CSV/Parquet of readable item names for "
                                              "report.html's examples; ids otherwise")
    names_id_col: str = setting("id", "id column of data.names_path")
    names_col: str = setting("name", "name column of data.names_path")


@dataclass
class IngestConfig:
    on_bad_rows: OnBadRows = setting(
        OnBadRows.fail, "fail: stop with a clear error | quarantine: bad rows go to the graph "
                        "stage's `quarantine` table")


@dataclass
class SampleConfig:
    walk_length: int = setting(
        3, "L: hops of the walks with restart whose expected visits rank the neighbours",
        at_least=1, at_most=MAX_WALK_LENGTH)
    restart_prob: float = setting(0.5, "α: the walk stops before each hop with this probability",
                                  at_least=0, below=1)
    push_threshold: float = setting(
        1e-4, "ε: a node passes mass on while mass/deg >= ε/deg(start); 0 = exact",
        at_least=0)
    degree_exponent: float = setting(
        0.7, "β: score = expected visits / degree^β (0 raw PPR, 0.5 symmetric, 1 lift); tuned on "
             "validation",
        at_least=0)
    quality_sample: int = setting(
        200, "items whose neighbourhoods are checked against exact PPR and a second seed "
             "(manifest: quality); 0 = none",
        at_least=0)
    num_neighbors: int = setting(10, "T: importance neighbours kept per item", at_least=1)
    mode: SampleMode = setting(
        SampleMode.memory, "memory (CSR broadcast, NumPy) | join (DataFrame joins, any size)")
    partitions: int = setting(0, "start-node partitions; 0 = 2 x Spark's default parallelism",
                              at_least=0)
    pair_window: int = setting(
        3, "items of a user at most this far apart (time order; seeded order without times) are "
           "pairs; tuned on validation",
        at_least=1)
    repeat_pairs: bool = setting(
        True, "a pair co-engaged by n users is n training examples (false: once); tuned on "
              "validation")
    hard_window: List[float] = setting(
        [0.02, 0.1], "hard negatives: score ranks in this fraction of the catalogue")
    num_hard: int = setting(
        6, "hard-negative candidates per query; batches carry them only if "
           "train.max_hard_negatives > 0",
        at_least=0)
    easy_negatives: int = setting(
        2000, "pool of easy-negative draws stored per minibatch; each epoch draws "
              "train.easy_negatives of it",
        at_least=1)
    negative_power: float = setting(
        0.75, "easy negatives drawn in proportion to (positives + 1)^this (word2vec's 0.75); 0 = "
              "uniform",
        at_least=0)
    val_fraction: float = setting(0.05, "fraction of pairs in validation minibatches",
                                  at_least=0, below=1)
    batch_size: int = setting(512, "query/positive pairs per minibatch", at_least=1)
    batches_per_file: int = setting(16, "minibatches per Parquet file of the batches stage",
                                    at_least=1)


@dataclass
class ModelConfig:
    num_layers: int = setting(
        2, "K: graph convolution layers (hops of neighbourhood aggregated); 0 = features and ids "
           "only", at_least=0)
    hidden_dim: int = setting(
        128, "width of every layer and of the embeddings; tuned on validation (64 -> 128)",
        at_least=1)
    aggregator: Aggregator = setting(
        Aggregator.importance, "neighbour aggregation: importance | mean | max | gatv2 | gated")
    id_embedding: IdEmbedding = setting(
        IdEmbedding.on, "learned per-item id embeddings: on (one row per item) | off "
                        "(features only) | hashed (model.id_buckets rows)")
    id_buckets: int = setting(100_000, "hashed: rows of the shared id-embedding table", at_least=1)
    head_layers: int = setting(
        0, "dense layers after the last conv; 2 = the paper's G2·ReLU(G1·h + g); 0 won on "
           "validation",
        at_least=0)
    item_bias: bool = setting(
        True, "learned query shift u: score = cos(q, c) + u.z_c, a per-item (popularity) bias")
    query_offsets: bool = setting(
        True, "learned per-item query offset o_q: score = (z_q + o_q + u).z_c, a directed "
              "relation (what follows q), as word2vec's input vectors")


@dataclass
class TrainConfig:
    epochs: int = setting(
        2, "passes over the training minibatches; tuned with lr on validation (5 x 0.001 -> 2 x "
           "0.003)",
        at_least=1)
    lr: float = setting(3e-3, "peak learning rate (Adam)", above=0)
    weight_decay: float = setting(0.0, "weight decay (L2 penalty) of the optimiser", at_least=0)
    schedule: Schedule = setting(Schedule.cosine, "learning-rate schedule: cosine | constant")
    loss: Loss = setting(
        Loss.softmax, "softmax (sampled, over in-batch and easy negatives, logQ-corrected) | "
                      "max_margin (PinSage's)")
    temperature: float = setting(
        0.1, "softmax: logits are cosine similarity / temperature (initial value)",
        above=0)
    learn_temperature: bool = setting(
        False, "softmax: learn the temperature with the model (capped at 0.01)")
    margin: float = setting(0.1, "max_margin: hinge margin", at_least=0)
    easy_negatives: int = setting(
        500, "easy negatives per minibatch and epoch, drawn from its stored pool "
             "(sample.easy_negatives)",
        at_least=1)
    max_hard_negatives: int = setting(
        0, "curriculum: epoch n uses min(n - 1, this) hard negatives; 0 = off (hurt on MovieLens)",
        at_least=0)
    prefetch: int = setting(
        4, "producer queue depth; 0 = synchronous loading (read, gather, compute in turn)",
        at_least=0)
    num_workers: int = setting(1, "producer threads loading minibatches", at_least=1)
    checkpoint_every: int = setting(
        50, "steps between checkpoints (0 = none within an epoch); also one at every epoch end",
        at_least=0)
    log_every: int = setting(50, "steps between reads of the losses from the device (progress "
                                 "bar, TensorBoard); also one at every epoch end",
                             at_least=1)
    resume: bool = setting(False, "continue from this run's latest checkpoint")
    device: Device = setting(Device.auto, "auto (cuda when available) | cpu | cuda")
    val_k: int = setting(10, "K of the validation hit-rate@K on the split's validation pairs",
                         at_least=1)
    bias_scales: List[float] = setting(
        [0.0, 0.25, 0.5, 0.75, 1.0], "model.item_bias: query-shift scales tried on validation "
                                     "after training; the best MRR is published (0 = no "
                                     "popularity prior)")


@dataclass
class InferConfig:
    partitions: int = setting(
        0, "reduce partitions per layer; 0 = max(default parallelism, items x (T+1) / 2M)",
        at_least=0)
    batch_rows: int = setting(
        65536, "rows per Arrow batch handed to PyTorch (bounds executor memory)",
        at_least=1)
    message_dtype: MessageDtype = setting(
        MessageDtype.float32, "float32 (exact) | float16 | bfloat16: half the bytes per "
                              "shuffled message")


@dataclass
class SplitConfig:
    protocol: Protocol = setting(
        Protocol.leave_last_out, "leave_last_out (needs times) | random_edges | new_items "
                                 "(inductive)")
    holdout_fraction: float = setting(
        0.1, "random_edges: fraction of edges held out (half validation, half test)",
        above=0, below=1)
    new_item_fraction: float = setting(
        0.1, "new_items: seeded share of the eligible items kept out of training",
        above=0, below=1)
    new_item_min_degree: int = setting(
        5, "new_items: eligible items have at least this many training edges",
        at_least=1)


@dataclass
class EvalConfig:
    ks: List[int] = setting([10, 50, 100], "K of hit-rate@K; MRR counts ranks up to max(ks)")
    kind: HeldOut = setting(
        HeldOut.test, "held-out rows scored: test | validation (tune on validation only)")
    max_queries: int = setting(
        0, "> 0: evaluate a seeded sample of that many held-out pairs; 0 = all (or "
           "large_graph_queries on a large graph)",
        at_least=0)
    large_graph_items: int = setting(
        1_000_000, "a graph of at least this many items is evaluated on a seeded sample of "
                   "large_graph_queries held-out pairs when max_queries is 0",
        at_least=1)
    large_graph_queries: int = setting(
        10_000, "held-out pairs evaluated on a large graph (large_graph_items) when max_queries "
                "is 0",
        at_least=1)
    bootstrap: int = setting(1000, "query resamples for the 95% confidence intervals", at_least=1)
    baselines: List[str] = setting(
        ["popularity", "random_walk", "item_knn", "als", "ease", "node2vec", "lightgcn",
         "features_only"], "baselines scored beside PinSage")
    item_knn_similarity: ItemKnnSimilarity = setting(
        ItemKnnSimilarity.bm25, "item_knn: cosine | tfidf | bm25 (implicit's item-item "
                                "recommenders)")
    item_knn_bm25_b: float = setting(
        1.0, "item_knn bm25: length normalisation by the item's degree, 0..1",
        at_least=0, at_most=1)
    als_factors: int = setting(
        32, "als: latent factors of implicit's AlternatingLeastSquares; tuned on validation (64 "
            "-> 32)",
        at_least=1)
    als_iterations: int = setting(15, "als: alternating least-squares sweeps", at_least=1)
    als_regularization: float = setting(0.01, "als: L2 regularisation")
    ease_lambda: float = setting(10.0, "ease (EASE): λ as a multiple of the mean diagonal of X^T X",
                                 above=0)
    ease_max_items: int = setting(
        30_000, "ease: dense items x items inverse; skipped with a note above this many items")
    node2vec_dim: int = setting(
        64, "node2vec: skip-gram (gensim Word2Vec) vector size; walks with p = q = 1",
        at_least=1)
    node2vec_walks: int = setting(10, "node2vec: walks from every item", at_least=1)
    node2vec_walk_length: int = setting(
        40, "node2vec: hops per walk (item -> user -> item is one hop)",
        at_least=1)
    node2vec_window: int = setting(1, "node2vec: skip-gram context window, in items", at_least=1)
    node2vec_epochs: int = setting(5, "node2vec: skip-gram training epochs", at_least=1)
    node2vec_max_tokens: int = setting(
        20_000_000, "node2vec: epochs, then walks, cut to train on at most this many tokens",
        at_least=1)
    lightgcn_dim: int = setting(
        128, "lightgcn: embedding size (torch-geometric LightGCN, BPR, on CPU)",
        at_least=1)
    lightgcn_layers: int = setting(2, "lightgcn: propagation layers", at_least=1)
    lightgcn_epochs: int = setting(10, "lightgcn: passes over the training edges", at_least=1)
    lightgcn_lr: float = setting(0.05, "lightgcn: Adam learning rate", above=0)
    lightgcn_batch_size: int = setting(8192, "lightgcn: training edges per BPR minibatch",
                                       at_least=1)
    lightgcn_max_steps: int = setting(
        200, "lightgcn: minibatches at most (each propagates the whole graph)",
        at_least=1)
    index: IndexType = setting(
        IndexType.hnsw, "serving index published as stage `index`: hnsw | ivf")
    index_m: int = setting(32, "hnsw: links per node", at_least=1)
    index_ef_construction: int = setting(200, "hnsw: candidate list size while building",
                                         at_least=1)
    index_ef_search: int = setting(128, "hnsw: candidate list size while searching", at_least=1)
    index_nlist: int = setting(0, "ivf: cells; 0 = about 4 sqrt(items)", at_least=0)
    index_nprobe: int = setting(16, "ivf: cells searched per query", at_least=1)
    index_max_gb: float = setting(
        0.0, "hnsw falls back to ivf (noted in the index manifest) when its estimated size "
             "exceeds this many GiB; 0 = half the memory available when it is built",
        at_least=0)
    map_items: int = setting(3000, "items drawn for the t-SNE map in the report", at_least=1)
    examples: int = setting(8, "held-out queries shown with their top-10 in report.html")


@dataclass
class AblateConfig:
    kind: HeldOut = setting(
        HeldOut.validation, "held-out rows scored: validation (tuning never looks at test) | test")
    rows: Dict[str, List[str]] = setting(
        {}, "row name -> overrides of sample.*, model.* or train.* (conf/ablate/default.yaml "
            "lists them)")


@dataclass
class CompareConfig:
    aggregators: List[str] = setting(
        ["importance", "mean", "max", "gatv2", "gated"],
        "one model per aggregator, trained beside the run and scored on eval.kind rows")


@dataclass
class RefreshConfig:
    retrain: bool = setting(
        False, "true: train a new model; false: infer with the latest published one")
    incremental: bool = setting(
        True, "re-walk only the items a changed edge can reach (same result as a full run)")
    max_regression: float = setting(
        0.02, "refuse a release whose hit-rate@10 is more than this below the current one",
        at_least=0)
    keep_versions: int = setting(3, "releases kept, with every stage version they use", at_least=1)
    rollback: bool = setting(
        False, "point the release back to the previous one, then stop (jobs/refresh.py "
               "--rollback)")


@dataclass
class Config:
    data: DataConfig = group(DataConfig, "the input graph: the bundled MovieLens-100K or your "
                                         "edge list (jobs/ingest.py)")
    ingest: IngestConfig = group(IngestConfig, "row-level validation of the input (jobs/ingest.py)")
    split: SplitConfig = group(SplitConfig, "which edges are held out to score the model "
                                            "(jobs/split.py; jobs/sample.py makes it first)")
    sample: SampleConfig = group(SampleConfig, "importance neighbourhoods, pairs, negatives and "
                                               "minibatches (jobs/sample.py)")
    model: ModelConfig = group(ModelConfig, "the PinSage network (jobs/train.py, jobs/infer.py)")
    train: TrainConfig = group(TrainConfig, "training: loss, negatives, optimiser, checkpoints "
                                            "(jobs/train.py)")
    infer: InferConfig = group(InferConfig, "bottom-up Spark inference of every item "
                                            "(jobs/infer.py)")
    eval: EvalConfig = group(EvalConfig, "metrics, baselines, serving index and report "
                                         "(jobs/evaluate.py)")
    refresh: RefreshConfig = group(RefreshConfig, "the scheduled refresh and its release gate "
                                                  "(jobs/refresh.py)")
    ablate: AblateConfig = group(AblateConfig, "the ablation table's rows (jobs/ablate.py)")
    compare: CompareConfig = group(CompareConfig, "the aggregator comparison "
                                                  "(jobs/compare_aggregators.py)")
    spark: SparkConfig = group(SparkConfig, "the Spark session every Spark job starts")
    run_dir: str = setting("runs/${data.name}", "directory of the run's versioned stages and "
                                                "logs")
    seed: int = setting(0, "seed of every random choice: split, walks, batches, training, "
                           "baselines")
    keep_versions: int = setting(3, "published versions of each stage kept on disk")
    force: bool = setting(False, "re-run a stage even when its inputs, config and code match "
                                 "the latest version")


def check(cfg: Any, *groups: str) -> None:
    """Enforce the bounds declared with each field of ``groups`` (every group when none is
    named): the first violation is one :class:`PipelineError` naming the key. (Choices are
    the fields' types, enforced while composing.)

    Every job checks the whole config before it starts (pipeline/cli.py), so a bad setting
    of a later stage fails at start-up; each stage's entry point checks its own groups, for
    callers that skip the job. Rules that tie two settings together stay with their stage.
    """
    schemas = {f.name: f.default_factory for f in fields(Config) if is_group(f)}
    for name in groups or tuple(schemas):
        for f in fields(schemas[name]):
            value = cfg[name][f.name]
            rule = _violated(value, f.metadata.get("bounds", (None,) * 4))
            if rule:
                raise PipelineError(f"{name}.{f.name} must be {rule}, got {value!r}")


def choices(schema: type, name: str) -> tuple:
    """The values a field of ``schema`` allows, for code that dispatches on them."""
    return tuple(m.value for m in get_type_hints(schema)[name])


def is_group(f: Any) -> bool:
    """Whether a field of :class:`Config` is a config group (a dataclass of settings)."""
    return isinstance(f.default_factory, type) and is_dataclass(f.default_factory)


def _violated(value: Any, bounds: tuple) -> str | None:
    """The bound ``value`` breaks, as the error words it; None when it keeps them all."""
    at_least, above, at_most, below = bounds
    if value is None or (at_least, above, at_most, below) == (None,) * 4:
        return None
    ok = ((at_least is None or value >= at_least) and (above is None or value > above)
          and (at_most is None or value <= at_most) and (below is None or value < below))
    if ok:
        return None
    low = (f"[{at_least:g}" if at_least is not None else
           f"({above:g}" if above is not None else None)
    high = (f"{at_most:g}]" if at_most is not None else
            f"{below:g})" if below is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
    return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


def register() -> None:
    """Store the schema; idempotent, so tests and jobs can both call it."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


register()
