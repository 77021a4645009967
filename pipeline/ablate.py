"""The ablation table (PinSage's Table 1 on our graph): what each part of the model is worth.

Each row of ``ablate.rows`` is the run's configuration with a few overrides
(sampling, model or training keys). A row is sampled, trained and embedded
beside the run, in ``<run_dir>/_ablate/``: rows with the same sampling
settings share one set of ``neighbors``/``pairs``/``batches``, every row gets
its own ``model``, and all of them share the run's ``graph`` and ``split``
(linked), so the run's own stages are never touched. Every row is scored on
the split's ``ablate.kind`` rows (validation: tuning never looks at the test
rows) by the evaluation's own code, with bootstrap CIs over one set of
resamples, and each row's paired difference from the defaults gets its own
CI. Re-running reuses every stage whose inputs and config match.
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from pyspark.sql import SparkSession
from tqdm import tqdm

from pipeline import config, metrics as M
from pipeline.errors import PipelineError
from pipeline.evaluate import baselines, data as eval_data, report, variants
from pipeline.evaluate.embed import embed_items
from pipeline.io import versioned
from pipeline.io.stage import Stage
from pipeline.sampling import run_sample
from pipeline.train.trainer import run_train

log = logging.getLogger(__name__)

STAGE = "ablation"
DEFAULTS = "defaults"
# What a row may change: anything else would change the data or the split it is scored on.
GROUPS = ("sample", "model", "train")


@dataclass
class AblationResult:
    version: str
    reused: bool
    metrics: dict
    table: str


def _row_config(cfg, name: str, overrides: list[str]):
    """``cfg`` with a row's overrides, parsed as Hydra parses the command line."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # Hydra's parse errors name the bad override
        raise PipelineError(f"ablate.rows.{name}: {e}") from None
    row = copy.deepcopy(cfg)
    for o in parsed:
        if o.key_or_group.split(".", 1)[0] not in GROUPS or o.is_delete():
            raise PipelineError(f"ablate.rows.{name}: '{o.input_line}' — a row may only set "
                                f"{', '.join(g + '.*' for g in GROUPS)}")
        try:
            OmegaConf.update(row, o.key_or_group, o.value(), merge=True)
        except Exception as e:  # the typed schema rejects unknown keys and wrong types
            raise PipelineError(f"ablate.rows.{name}: {str(e).splitlines()[0]}") from None
    try:                # every row is checked before the first one trains
        config.check(row)
    except PipelineError as e:
        raise PipelineError(f"ablate.rows.{name}: {e}") from None
    return row


def _settings(cfg) -> dict:
    return {g: OmegaConf.to_container(cfg[g], resolve=True) for g in GROUPS}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name).strip("-") or "row"


def _embed_row(spark: SparkSession, cfg, name: str
               ) -> tuple[tuple[np.ndarray, np.ndarray | None], str]:
    """Sample (shared by rows with the same sampling settings), train and embed one row."""
    root = f"{cfg.run_dir}/_ablate"
    # Sampling reads train.* only for whether minibatches carry hard candidates.
    key = versioned.fingerprint({"sample": _settings(cfg)["sample"],
                                 "hard": int(cfg.train.max_hard_negatives) > 0,
                                 "num_layers": int(cfg.model.num_layers), "seed": int(cfg.seed)})
    sample_dir = versioned.link_stages(cfg.run_dir, f"{root}/sample-{key[:12]}", ("graph", "split"))
    run_sample(spark, OmegaConf.merge(cfg, {"run_dir": sample_dir}))
    row_dir = versioned.link_stages(sample_dir, f"{root}/{_slug(name)}",
                          ("graph", "split", "neighbors", "batches"))
    result = run_train(OmegaConf.merge(cfg, {"run_dir": row_dir, "train": {"resume": False}}))
    return embed_items(row_dir, result.version), result.version


def run_ablate(spark: SparkSession, cfg) -> AblationResult:
    """Score every row of ``ablate.rows`` (and the defaults); publish the ``ablation`` stage."""
    run_dir, ab = cfg.run_dir, cfg.ablate
    ks = sorted(set(int(k) for k in cfg.eval.ks))
    rows = {DEFAULTS: cfg, **{name: _row_config(cfg, name, list(o)) for name, o in ab.rows.items()}}
    versions = versioned.latest_inputs(run_dir, ("graph", "split"), "the ablation")
    data = eval_data.held_out_rows(cfg, ab.kind, versions["split"])
    ranks: dict[str, np.ndarray] = {}
    models: dict[str, str] = {}
    same_as: dict[str, str] = {}
    done: dict[str, str] = {}      # settings fingerprint -> first row trained with them
    for name, row in tqdm(rows.items(), desc="ablate", unit="row"):
        fp = versioned.fingerprint(_settings(row))
        if fp in done:
            same_as[name] = done[fp]
            ranks[name], models[name] = ranks[done[fp]], models[done[fp]]
            continue
        done[fp] = name
        embeddings, models[name] = _embed_row(spark, row, name)
        ranks[name] = baselines.embedding_ranks(data, *embeddings, ks)
        log.info("ablation %s: %s", name, M.summarize(ranks[name], ks))

    # Each row minus the defaults, query by query, on the same resamples: a
    # paired CI says whether a part is worth anything, which overlapping
    # per-row CIs cannot.
    per_query = {n: M.per_query(r, ks) for n, r in ranks.items()}
    diffs = {n: {k: v - per_query[DEFAULTS][k] for k, v in per_query[n].items()}
             for n in rows if n != DEFAULTS and n not in same_as}
    metrics, ci = variants.scored(cfg, ab.kind, data, ranks, ks,
                                  extra={f"{n} - {DEFAULTS}": d for n, d in diffs.items()})
    metrics.update({"rows": {n: list(ab.rows[n]) if n in ab.rows else [] for n in rows},
                    "same_as": same_as, "models": models,
                    "vs_defaults": {n: {"difference": {k: float(v.mean()) for k, v in d.items()},
                                        "ci95": ci[f"{n} - {DEFAULTS}"]}
                                    for n, d in diffs.items()}})
    table = report.markdown_table(metrics) + "\n\n" + report.difference_table(
        metrics["vs_defaults"], [f"hit_rate@{ks[0]}", "mrr"], DEFAULTS)
    stage = Stage(run_dir, STAGE, versions,
                  {"ablate": OmegaConf.to_container(ab, resolve=True), "models": models, "ks": ks,
                   "bootstrap": cfg.eval.bootstrap, "max_queries": cfg.eval.max_queries,
                   "large_graph": [cfg.eval.large_graph_items, cfg.eval.large_graph_queries]},
                  keep=cfg.keep_versions, force=cfg.force)
    found = stage.reusable()
    if found:
        return AblationResult(found, True, metrics, table)
    with stage.publish() as out:
        variants.write_table(out.path, STAGE, table, metrics)
        report.ablation_plot(metrics, out.path / "ablation.png")
        out.manifest.update({"counts": {"rows": len(rows), "queries": metrics["num_queries"]}})
    return AblationResult(out.version, False, metrics, table)


def print_summary(result: AblationResult) -> None:
    m = result.metrics
    reused = " (reused)" if result.reused else ""
    print(f"\nablation/{result.version}{reused}: {m['dataset']}, {m['num_queries']:,} {m['split']} "
          f"queries, 95% bootstrap CIs ({m['bootstrap']} resamples)\n")
    print(result.table)
    for name, overrides in m["rows"].items():
        what = " ".join(overrides) or "the run's configuration"
        same = f" (same settings as '{m['same_as'][name]}')" if name in m["same_as"] else ""
        print(f"  {name}: {what}{same}")
