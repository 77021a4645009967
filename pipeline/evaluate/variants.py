"""Models trained beside the run, only to be compared with it.

* the aggregator comparison (``jobs/compare_aggregators.py``): one PinSage
  model per aggregator of ``compare.aggregators``, trained by the ordinary
  trainer on the SAME split, neighbourhoods and minibatches, in
  ``<run_dir>/_compare/aggregator=<name>/``.
* ``split.protocol=new_items``: ``pinsage_retrained``, the run's configuration
  trained on the run's own minibatches, new items' edges included (the upper
  bound of the inductive model), in ``<run_dir>/_compare/retrained/``.

Each variant's input stages are links to the main run's. That keeps the main
run's ``model`` stage (what inference and serving use) untouched, and a
re-run reuses each variant's published model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline import metrics as M
from pipeline.evaluate import data as eval_data
from pipeline.evaluate.embed import embed_items
from pipeline.io import versioned
from pipeline.train.trainer import run_train

log = logging.getLogger(__name__)

INPUT_STAGES = ("graph", "split", "neighbors", "batches")


def scored(cfg, kind: str, data: eval_data.EvalData, ranks: dict[str, np.ndarray],
           ks: list[int], extra: dict[str, dict[str, np.ndarray]] | None = None
           ) -> tuple[dict, dict]:
    """``(metrics, ci)``: each variant's metrics with 95% CIs, every variant (and each
    per-query series of ``extra``, e.g. paired differences) on the same resamples."""
    per_query = {n: M.per_query(r, ks) for n, r in ranks.items()}
    ci = M.bootstrap_ci({**per_query, **(extra or {})}, cfg.eval.bootstrap, int(cfg.seed))
    metrics = {"dataset": cfg.data.name, "split": kind, "num_queries": int(len(data.queries)),
               "ks": ks, "bootstrap": cfg.eval.bootstrap,
               "methods": {n: {**M.summarize(r, ks), "ci95": ci[n]} for n, r in ranks.items()}}
    if data.sampled:
        metrics["notes"] = [data.sampled]
    return metrics, ci


def write_table(directory: Path, name: str, table: str, metrics: dict) -> None:
    """``<name>.md`` (the printed table) and ``<name>.json`` (the metrics) of a comparison."""
    (directory / f"{name}.md").write_text(table + "\n")
    (directory / f"{name}.json").write_text(json.dumps(metrics, indent=2))


def variant_dir(run_dir: str, name: str) -> Path:
    """``<run_dir>/_compare/<name>``, sharing ``run_dir``'s input stages."""
    return Path(versioned.link_stages(run_dir, str(Path(run_dir) / "_compare" / name),
                                      INPUT_STAGES))


def _train(cfg, name: str, overrides: dict, inductive: bool = True) -> tuple[tuple[np.ndarray, np.ndarray | None], str]:
    sub = variant_dir(cfg.run_dir, name)
    variant = OmegaConf.merge(cfg, {"run_dir": str(sub), "train": {"resume": False}}, overrides)
    result = run_train(variant, inductive=inductive)
    log.info("%s: model/%s%s", name, result.version, " (reused)" if result.reused else "")
    return embed_items(str(sub), result.version), result.version


def train_and_embed(cfg, aggregator: str) -> tuple[tuple[np.ndarray, np.ndarray | None], str]:
    """Train (or reuse) the ``aggregator`` variant; ``((item embeddings, query vectors), model
    version)``."""
    return _train(cfg, f"aggregator={aggregator}", {"model": {"aggregator": aggregator}})


def retrained(cfg) -> tuple[tuple[np.ndarray, np.ndarray | None], str]:
    """``new_items``' upper bound: the same configuration trained with the new items' edges.

    Its minibatches are the run's own (sampled from the split's whole training
    graph), so it sees the new items but never a held-out row.
    """
    return _train(cfg, "retrained", {}, inductive=False)
