"""The aggregator comparison: one PinSage model per aggregator, published as stage ``compare``.

Each of ``compare.aggregators`` is the run's configuration with that
``model.aggregator``, trained by the ordinary trainer on the run's own split,
neighbourhoods and minibatches beside the run (``pipeline.evaluate.variants``),
embedded in memory and scored on the split's ``eval.kind`` rows by the
evaluation's code, with bootstrap CIs over one set of resamples. It is a job
of its own because it trains models: the evaluation only scores what was
published. Re-running reuses every variant's model and the stage.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import metrics as M
from pipeline.errors import PipelineError
from pipeline.evaluate import baselines, data as eval_data, report, variants
from pipeline.io import versioned
from pipeline.io.stage import Stage
from pipeline.model.layers import check_aggregator

log = logging.getLogger(__name__)

STAGE = "compare"


@dataclass
class CompareResult:
    version: str
    reused: bool
    metrics: dict
    table: str


def _validate(aggregators: list[str]) -> None:
    if not aggregators or len(set(aggregators)) != len(aggregators):
        raise PipelineError(f"compare.aggregators must list distinct aggregators, got "
                            f"{aggregators}")
    for agg in aggregators:
        try:
            check_aggregator(agg)
        except ValueError as e:
            raise PipelineError(f"compare.aggregators: {e}") from None


def run_compare_aggregators(cfg) -> CompareResult:
    """Train (or reuse) one model per aggregator, score them; publish the ``compare`` stage."""
    run_dir, seed, ev = cfg.run_dir, int(cfg.seed), cfg.eval
    aggregators = [str(a) for a in cfg.compare.aggregators]
    _validate(aggregators)
    ks = sorted(set(int(k) for k in ev.ks))
    inputs = versioned.latest_inputs(run_dir, variants.INPUT_STAGES, "the aggregator comparison")
    data = eval_data.held_out_rows(cfg, ev.kind, inputs["split"])
    ranks: dict[str, np.ndarray] = {}
    models: dict[str, str] = {}
    for agg in tqdm(aggregators, desc="compare", unit="aggregator"):
        embeddings, models[agg] = variants.train_and_embed(cfg, agg)
        ranks[agg] = baselines.embedding_ranks(data, *embeddings, ks)
        log.info("aggregator %s: %s", agg, M.summarize(ranks[agg], ks))
    metrics, _ = variants.scored(cfg, ev.kind, data, ranks, ks)
    metrics["models"] = models
    table = report.markdown_table(metrics)
    stage = Stage(run_dir, STAGE, inputs,
                  {"compare": OmegaConf.to_container(cfg.compare, resolve=True), "models": models,
                   "kind": ev.kind, "ks": ks, "bootstrap": ev.bootstrap,
                   "max_queries": ev.max_queries, "large_graph": [ev.large_graph_items,
                                                                  ev.large_graph_queries],
                   "seed": seed},
                  keep=cfg.keep_versions, force=cfg.force)
    found = stage.reusable()
    if found:
        return CompareResult(found, True, metrics, table)
    with stage.publish() as out:
        variants.write_table(out.path, STAGE, table, metrics)
        out.manifest["counts"] = {"aggregators": len(aggregators),
                                  "queries": metrics["num_queries"]}
    return CompareResult(out.version, False, metrics, table)


def print_summary(result: CompareResult) -> None:
    m = result.metrics
    reused = " (reused)" if result.reused else ""
    print(f"\ncompare/{result.version}{reused}: {m['dataset']}, {m['num_queries']:,} {m['split']} "
          f"queries, 95% bootstrap CIs ({m['bootstrap']} resamples)\n")
    print(result.table)
    print("\n" + "\n".join(f"  {a}: model/{v} (in _compare/aggregator={a})"
                           for a, v in m["models"].items()))
