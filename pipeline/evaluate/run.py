"""The evaluation run: methods, metrics, CIs, and the published ``index`` and ``eval`` stages."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import config, metrics as M
from pipeline.errors import PipelineError
from pipeline.evaluate import baselines, data as eval_data, report
from pipeline.evaluate import variants as variants_mod
from pipeline.evaluate.index import publish_index
from pipeline.ingest import REPORT_ONLY
from pipeline.ingest.sources import item_names
from pipeline.io import versioned
from pipeline.io.embeddings import read_embeddings
from pipeline.io.manifests import ModelManifest, SplitManifest
from pipeline.io.stage import Stage
from pipeline.split import new_items

log = logging.getLogger(__name__)

STAGE = "eval"
BASELINES = ("popularity", "random_walk", "item_knn", "als", "ease", "node2vec", "lightgcn",
             "features_only")
OURS = "pinsage"
# The sample.* settings the random_walk baseline ranks with.
RANDOM_WALK_KEYS = ("walk_length", "restart_prob", "push_threshold", "degree_exponent")
REPORT = "report/report.html"
RETRAINED = "pinsage_retrained"   # new_items: the same configuration trained with the new items


@dataclass
class EvalResult:
    version: str
    reused: bool
    metrics: dict
    table: str
    index: dict = field(default_factory=dict)
    report: str = ""            # report.html of the eval version


def _validate(cfg) -> None:
    config.check(cfg, "eval")
    ev = cfg.eval
    if not ev.ks or min(ev.ks) < 1:
        raise PipelineError(f"eval.ks must be positive integers, got {list(ev.ks)}")
    unknown = sorted(set(ev.baselines) - set(BASELINES))
    if unknown:
        raise PipelineError(f"eval.baselines: unknown {unknown}; choose from {', '.join(BASELINES)}")


def lineage(run_dir: str, stage: str, version: str) -> dict[str, str]:
    """Every stage version ``stage/version`` was built from, following manifests' inputs."""
    found: dict[str, str] = {}
    todo = [(stage, version)]
    while todo:
        s, v = todo.pop()
        try:
            inputs = versioned.read_manifest(run_dir, s, v).get("inputs") or {}
        except (versioned.StageNotFound, FileNotFoundError):
            continue
        for s2, v2 in inputs.items():
            if isinstance(v2, str) and s2 not in found:
                found[s2] = v2
                todo.append((s2, v2))
    return found


def _embeddings(run_dir: str, n_items: int, split_version: str, version: str | None):
    """The published embeddings (``version``, else the latest) as an item-indexed matrix,
    checked to come from this split."""
    try:
        emb = read_embeddings(run_dir, version)
    except versioned.StageNotFound:
        raise PipelineError(f"evaluation needs the 'embeddings' stage in {run_dir}; "
                            f"run jobs/infer.py first") from None
    if len(emb.node) != n_items or not np.array_equal(emb.node, np.arange(n_items)):
        raise PipelineError(f"embeddings/{emb.version} holds {len(emb.node)} nodes; expected the "
                            f"{n_items} items 0..{n_items - 1} of the evaluated graph")
    source_split = lineage(run_dir, "embeddings", emb.version).get("split")
    if source_split is not None and source_split != split_version:
        raise PipelineError(f"embeddings/{emb.version} come from a model trained on split/"
                            f"{source_split}, not the split evaluated (split/{split_version}): its "
                            f"held-out interactions may have been trained on; re-run train and infer")
    return emb


def _methods(cfg, data: eval_data.EvalData, kmax: int, notes: dict) -> dict[str, Callable]:
    ev, seed = cfg.eval, int(cfg.seed)
    out: dict[str, Callable] = {}
    for name in ev.baselines:
        if name == "popularity":
            out[name] = lambda q: baselines.popularity(data, q, kmax)
        elif name == "random_walk":
            smp = cfg.sample   # the sampler's own ranking, with its settings
            out[name] = lambda q: baselines.random_walk(
                data, q, kmax, walk_length=smp.walk_length, restart_prob=smp.restart_prob,
                push_threshold=smp.push_threshold, degree_exponent=smp.degree_exponent, seed=seed)
        elif name == "item_knn":
            out[name] = lambda q: baselines.item_knn(data, q, kmax,
                                                     similarity=ev.item_knn_similarity,
                                                     bm25_b=ev.item_knn_bm25_b)
        elif name == "als":
            out[name] = lambda q: baselines.als(data, q, kmax, factors=ev.als_factors,
                                                iterations=ev.als_iterations,
                                                regularization=ev.als_regularization, seed=seed)
        elif name == "ease":
            if data.n_items > ev.ease_max_items:
                notes[name] = (f"skipped: {data.n_items} items > eval.ease_max_items="
                               f"{ev.ease_max_items} (EASE inverts a dense items x items matrix)")
                continue
            out[name] = lambda q: baselines.ease(data, q, kmax, relative_lambda=ev.ease_lambda)
        elif name == "node2vec":
            walks_n, epochs = baselines.node2vec_budget(
                int((data.degree > 0).sum()), ev.node2vec_walks, ev.node2vec_walk_length,
                ev.node2vec_epochs, ev.node2vec_max_tokens)
            if (walks_n, epochs) != (ev.node2vec_walks, ev.node2vec_epochs):
                notes[name] = (f"cut to {epochs} of {ev.node2vec_epochs} epochs, {walks_n} of "
                               f"{ev.node2vec_walks} walks per item, to fit "
                               f"eval.node2vec_max_tokens={ev.node2vec_max_tokens:,}")
            out[name] = lambda q, w=walks_n, e=epochs: baselines.node2vec(
                data, q, kmax, dim=ev.node2vec_dim, walks_per_item=w,
                walk_length=ev.node2vec_walk_length, window=ev.node2vec_window, epochs=e,
                seed=seed)
        elif name == "lightgcn":
            steps = baselines.lightgcn_steps(data, ev.lightgcn_epochs, ev.lightgcn_batch_size)
            if steps > ev.lightgcn_max_steps:
                notes[name] = (f"stopped after eval.lightgcn_max_steps={ev.lightgcn_max_steps} "
                               f"minibatches, {ev.lightgcn_max_steps / steps * ev.lightgcn_epochs:.1f}"
                               f" of {ev.lightgcn_epochs} epochs")
            out[name] = lambda q: baselines.lightgcn(
                data, q, kmax, dim=ev.lightgcn_dim, layers=ev.lightgcn_layers,
                epochs=ev.lightgcn_epochs, max_steps=ev.lightgcn_max_steps, lr=ev.lightgcn_lr,
                batch_size=ev.lightgcn_batch_size, seed=seed)
        elif name == "features_only":
            if not data.feature_names:
                notes[name] = "skipped: the graph has no item features"
                continue
            out[name] = lambda q: baselines.features_only(data, q, kmax)
    return out


def _params(cfg, data: eval_data.EvalData) -> dict:
    """Every setting the ``eval`` stage's output depends on."""
    ev = cfg.eval
    params = {"eval": OmegaConf.to_container(ev, resolve=True), "seed": int(cfg.seed)}
    if "random_walk" in ev.baselines:   # it ranks with the sampler's settings
        params["random_walk"] = {k: cfg.sample[k] for k in RANDOM_WALK_KEYS}
    params["names"] = {k: cfg.data[k] for k in REPORT_ONLY}
    if new_items.is_inductive(cfg.run_dir, data.split_version):
        params["variants"] = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                              "train": OmegaConf.to_container(cfg.train, resolve=True)}
    return params


def _variant_methods(cfg, data: eval_data.EvalData, kmax: int, variants: dict[str, str]) -> dict:
    """Under ``new_items``, the retrained upper bound: a PinSage row trained for this
    evaluation, which records the model version it trained in ``variants``."""
    if not new_items.is_inductive(cfg.run_dir, data.split_version):
        return {}

    def run_retrained(q):
        (matrix, query_vectors), version = variants_mod.retrained(cfg)
        variants[RETRAINED] = version
        return baselines.embedding_topk(matrix, q, kmax, data.live, query_vectors)
    return {RETRAINED: run_retrained}


def _score(methods: dict, uniq: np.ndarray, inverse: np.ndarray, data: eval_data.EvalData,
           ks: list[int]) -> tuple[dict, dict, dict]:
    """Each method's target ranks per held-out row, its top items per distinct query, and
    its seconds."""
    ranks, tops, seconds = {}, {}, {}
    for name, fn in tqdm(methods.items(), desc="evaluate", unit="method", leave=False):
        t0 = time.perf_counter()
        tops[name] = M.only_items(fn(uniq), data.live)
        seconds[name] = round(time.perf_counter() - t0, 3)
        ranks[name] = M.target_ranks(tops[name][inverse], data.targets)
        log.info("%s: %s in %.1fs", name, M.summarize(ranks[name], ks), seconds[name])
    return ranks, tops, seconds


def _write_report(cfg, rep: Path, metrics: dict, table: str, notes: dict, tensorboard: Path | None,
                  ranks: dict, data: eval_data.EvalData, emb, shown: dict) -> None:
    """``report/``: the table, the three plots and ``report.html`` with example queries."""
    ev, seed = cfg.eval, int(cfg.seed)
    rep.mkdir()
    (rep / "metrics.md").write_text(table + "\n")
    note = report.training_curves(tensorboard, rep / "training_curves.png")
    if note:
        notes["training_curves"] = note
    report.hit_rate_curves(ranks, max(metrics["ks"]), rep / "hit_rate_at_k.png")
    labels, what = report.categories(data.features(), data.feature_names, data.degree)
    report.embedding_map(emb.matrix, labels, what, rep / "embedding_map.png",
                         max_points=ev.map_items, seed=seed)
    report.html_report(metrics, examples(data, shown, emb.id, item_names(cfg.data),
                                         ev.examples, seed), rep)


def _metrics(cfg, data: eval_data.EvalData, ranks: dict, seconds: dict, notes: dict, idx,
             inputs: dict, variants: dict) -> tuple[dict, str | None]:
    """``metrics.json``: every method's metrics with bootstrap CIs, PinSage's paired
    difference from the best baseline (returned too), and what was evaluated."""
    ev, seed, run_dir = cfg.eval, int(cfg.seed), cfg.run_dir
    ks = sorted(set(int(k) for k in ev.ks))
    per_query = {name: M.per_query(r, ks) for name, r in ranks.items()}
    best = _best_baseline(per_query, [n for n in ranks if n in BASELINES])
    if best is not None:
        per_query[f"{OURS} - {best}"] = {k: per_query[OURS][k] - per_query[best][k]
                                        for k in per_query[OURS]}
    ci = M.bootstrap_ci(per_query, ev.bootstrap, seed)
    metrics = {
        "dataset": cfg.data.name,
        "protocol": SplitManifest.read(run_dir, data.split_version).protocol,
        "split": ev.kind,
        "num_queries": int(len(data.queries)),
        "num_items": data.n_items,
        "ks": ks,
        "bootstrap": ev.bootstrap,
        "methods": {name: {**M.summarize(r, ks), "ci95": ci[name], "seconds": seconds[name]}
                    for name, r in ranks.items()},
        "notes": notes,
        "index": {"stage": f"index/{idx.version}", "type": idx.manifest.get("index", ev.index),
                  **idx.manifest["quality"]},
        "versions": {**inputs, "graph": data.graph_version, **{f"model{n[len(OURS):]}": v
                                                              for n, v in variants.items()}},
    }
    if best is not None:
        diff = f"{OURS} - {best}"
        metrics["vs_best_baseline"] = {
            "baseline": best,
            "difference": {k: float(v.mean()) for k, v in per_query[diff].items()},
            "ci95": ci[diff]}
    if RETRAINED in ranks:
        hit = f"hit_rate@{ks[0]}"
        base = metrics["methods"][RETRAINED][hit]
        metrics["inductive_ratio"] = metrics["methods"][OURS][hit] / base if base else None
        metrics["new_items"] = int(len(data.new_items))
    return metrics, best


def run_evaluate(cfg, *, split: str | None = None, embeddings: str | None = None) -> EvalResult:
    """Evaluate the embeddings and the baselines on the split's held-out rows (the latest
    versions where not given); publish ``index`` and ``eval``."""
    ev, run_dir, seed = cfg.eval, cfg.run_dir, int(cfg.seed)
    _validate(cfg)
    ks = sorted(set(int(k) for k in ev.ks))
    kmax = ks[-1]
    data = eval_data.held_out_rows(cfg, ev.kind, split)
    emb = _embeddings(run_dir, data.n_items, data.split_version, embeddings)
    # Each distinct query is answered once; rows map back to the held-out pairs.
    uniq, inverse = np.unique(data.queries, return_inverse=True)

    idx = publish_index(run_dir, ev, emb.version, uniq, keep=cfg.keep_versions, force=cfg.force,
                        seed=seed)
    inputs = {"split": data.split_version, "embeddings": emb.version, "index": idx.version}
    stage = Stage(run_dir, STAGE, inputs, _params(cfg, data), keep=cfg.keep_versions,
                  force=cfg.force)
    found = stage.reusable()
    if found:
        path = versioned.resolve(run_dir, STAGE, found)
        metrics = json.loads((path / "metrics.json").read_text())
        return EvalResult(found, True, metrics, report.markdown_table(metrics), idx.manifest,
                          str(path / REPORT))

    notes: dict[str, str] = {"queries": data.sampled} if data.sampled else {}
    methods = _methods(cfg, data, kmax, notes)
    methods[OURS] = lambda q: baselines.embedding_topk(emb.matrix, q, kmax, data.live,
                                                       emb.queries)
    origin = lineage(run_dir, "embeddings", emb.version)
    model_manifest = ModelManifest.read(run_dir, origin["model"]) if "model" in origin else None
    variants: dict[str, str] = {}       # variant row -> the model version it trained
    methods.update(_variant_methods(cfg, data, kmax, variants))
    ranks, tops, seconds = _score(methods, uniq, inverse, data, ks)

    metrics, best = _metrics(cfg, data, ranks, seconds, notes, idx, inputs, variants)
    table = report.markdown_table(metrics)

    with stage.publish() as out:
        tb = (Path(run_dir) / model_manifest.tensorboard
              if model_manifest and model_manifest.tensorboard else None)
        shown = [OURS] + ([best] if best is not None else [])
        _write_report(cfg, out.path / "report", metrics, table, notes, tb, ranks, data, emb,
                      {n: tops[n][inverse] for n in shown})
        (out.path / "metrics.json").write_text(json.dumps(metrics, indent=2))
        out.manifest.update({"counts": {"queries": metrics["num_queries"],
                                        "methods": len(ranks)},
                             "metrics": {n: {k: v for k, v in m.items() if k != "ci95"}
                                         for n, m in metrics["methods"].items()},
                             "notes": notes})
    log.info("published eval/%s", out.version)
    return EvalResult(out.version, False, metrics, table, idx.manifest,
                      str(versioned.resolve(run_dir, STAGE, out.version) / REPORT))


def print_summary(result: EvalResult) -> None:
    """What the jobs print: the index's recall, the metrics table and the best-baseline gap."""
    m = result.metrics
    reused = " (reused)" if result.reused else ""
    recall = ", ".join(f"recall@{k} {m['index'][f'recall@{k}']:.4f}" for k in m["ks"])
    print(f"\nevaluate {m['index']['stage']}: {m['index']['type']}, {recall} vs exact search")
    print(f"         eval/{result.version}{reused}: {m['dataset']}, {m['protocol']}, "
          f"{m['num_queries']:,} {m['split']} queries over {m['num_items']:,} items, "
          f"95% bootstrap CIs ({m['bootstrap']} resamples)\n")
    print(result.table)
    vs = m.get("vs_best_baseline")
    if vs:
        d, ci = vs["difference"], vs["ci95"]
        print(f"\n{OURS} - {vs['baseline']} (best baseline, paired): "
              + ", ".join(f"{k} {d[k]:+.4f} [{ci[k][0]:+.4f}, {ci[k][1]:+.4f}]"
                          for k in (f"hit_rate@{m['ks'][0]}", "mrr")))
    if m.get("inductive_ratio") is not None:
        hit = f"hit_rate@{m['ks'][0]}"
        print(f"\ninductive_ratio = {hit}({OURS}) / {hit}({RETRAINED}) = "
              f"{m['inductive_ratio']:.3f} ({m['new_items']:,} new items, never seen in training)")
    for what, note in m.get("notes", {}).items():
        print(f"note: {what}: {note}")
    if result.report:
        print(f"\nreport: {result.report}")


def examples(data, tops: dict[str, np.ndarray], ids: list[str], names: dict[str, str],
             count: int, seed: int, k: int = 10) -> list[dict]:
    """A seeded sample of ``count`` held-out rows: the query, its target and each method's top ``k``.

    ``tops`` holds each method's ranked items per held-out row; items are
    shown by readable name where ``names`` has one (by source id otherwise).
    """
    def label(item: int) -> str:
        return names.get(ids[item], ids[item])
    rows = np.sort(np.random.default_rng(seed).choice(
        len(data.queries), min(count, len(data.queries)), replace=False))
    return [{"query": label(int(data.queries[r])), "target": label(int(data.targets[r])),
             "methods": {name: [(label(int(i)), int(i) == int(data.targets[r]))
                                for i in top[r][:k] if i >= 0]
                         for name, top in tops.items()}}
            for r in rows]


def _best_baseline(per_query: dict, names: list[str]) -> str | None:
    """The baseline with the highest MRR (ties: higher hit-rate at the smallest K)."""
    if OURS not in per_query or not names:
        return None
    return max(names, key=lambda n: (per_query[n]["mrr"].mean(),
                                     next(iter(per_query[n].values())).mean()))

