"""The human side of an evaluation: a Markdown table, PNG plots and a self-contained HTML page.

Plots (matplotlib, Agg backend, so no display is needed): training curves read
back from the run's TensorBoard logs, hit-rate@K curves per method, and a 2-D
t-SNE map of the item embeddings coloured by a categorical input feature.
"""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

MAP_CATEGORIES = 10   # most frequent categories get their own colour; the rest are "other"
TSNE_ITERATIONS = 500  # the map settles well before sklearn's default 1000 (half the time)


def markdown_table(metrics: dict) -> str:
    """Methods as rows; each cell ``value [95% CI]``."""
    names = [f"hit_rate@{k}" for k in metrics["ks"]] + ["mrr"]
    return _table("method", names, {
        method: [f"{m[n]:.4f} [{m['ci95'][n][0]:.4f}, {m['ci95'][n][1]:.4f}]" for n in names]
        for method, m in metrics["methods"].items()})


def _table(first: str, names: list[str], rows: dict[str, list[str]]) -> str:
    """A Markdown table: column ``first`` holds the row names, then one column per name."""
    head = f"| {first} | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    return "\n".join([head, rule, *(f"| {row} | " + " | ".join(cells) + " |"
                                     for row, cells in rows.items())])


def difference_table(diffs: dict, names: list[str], base: str) -> str:
    """Rows ``name - base``; each cell the mean paired difference ``[95% CI]``, signed."""
    return _table(f"row - {base}", names, {
        row: [f"{d['difference'][n]:+.4f} [{d['ci95'][n][0]:+.4f}, {d['ci95'][n][1]:+.4f}]"
              for n in names]
        for row, d in diffs.items()})


def training_curves(tb_dir: Path | None, out: Path) -> str | None:
    """Plot loss and validation curves from a TensorBoard run directory into ``out``.

    Returns None when the plot was written, else the reason it was not (a note for the report).
    """
    if tb_dir is None or not tb_dir.is_dir():
        return "no TensorBoard logs for the evaluated model"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one INFO line per event file
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if not tags:
        return f"no scalars in {tb_dir}"
    panels = [("loss", [t for t in tags if t.startswith("train/loss") or t == "val/loss"]),
              ("validation hit-rate", [t for t in tags if t.startswith("val/") and "hit_rate" in t])]
    panels = [(title, ts) for title, ts in panels if ts]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, ts) in zip(axes[0], panels):
        for t in sorted(ts):
            # A forced re-run or a resume writes another event file into the same
            # directory: the latest value of each step wins.
            latest = {e.step: e.value for e in sorted(acc.Scalars(t), key=lambda e: e.wall_time)}
            steps = sorted(latest)
            ax.plot(steps, [latest[s] for s in steps], label=t,
                    marker="o" if len(steps) < 20 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return None


def hit_rate_curves(ranks: dict[str, np.ndarray], kmax: int, out: Path) -> None:
    """Hit-rate@K for K = 1..kmax, one line per method."""
    ks = np.arange(1, kmax + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, r in ranks.items():
        r = np.asarray(r)
        counts = np.bincount(r[r > 0], minlength=kmax + 1)[1:kmax + 1]
        ax.plot(ks, np.cumsum(counts) / max(1, len(r)), label=method,
                linewidth=2.5 if method == "pinsage" else 1.2)
    ax.set_xlabel("K")
    ax.set_ylabel("hit-rate@K")
    ax.set_title(f"hit-rate@K on {len(next(iter(ranks.values()), []))} held-out queries")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def ablation_plot(metrics: dict, out: Path) -> None:
    """Hit-rate at the smallest K and MRR per ablation row, with 95% CIs as error bars."""
    names = list(metrics["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    for ax, metric in zip(axes, (f"hit_rate@{metrics['ks'][0]}", "mrr")):
        vals = np.array([metrics["methods"][n][metric] for n in names])
        ci = np.array([metrics["methods"][n]["ci95"][metric] for n in names])
        y = np.arange(len(names))
        ax.barh(y, vals, xerr=[vals - ci[:, 0], ci[:, 1] - vals], capsize=3,
                color=["tab:orange" if n == names[0] else "tab:blue" for n in names])
        ax.axvline(vals[0], color="tab:orange", linewidth=0.8, linestyle="--")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"ablation on {metrics['num_queries']} {metrics['split']} queries (95% CIs)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def categories(features: np.ndarray, names: list[str], degree: np.ndarray
               ) -> tuple[np.ndarray, str]:
    """A categorical label per item, and what it is.

    From one-hot/multi-hot feature columns named ``<field>=<value>`` (MovieLens
    genres) the item's least common value is taken (the most telling of its
    genres; items with none get "none"). Without such columns: popularity
    quartile of the training degree.
    """
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        if "=" in name:
            groups.setdefault(name.split("=", 1)[0], []).append(j)
    if groups and features.shape[1]:
        field, cols = max(groups.items(), key=lambda kv: len(kv[1]))
        block = features[:, cols] > 0
        freq = block.sum(axis=0)
        rarity = np.where(block, freq[None, :], np.iinfo(np.int64).max)
        pick = rarity.argmin(axis=1)
        values = np.array([names[c].split("=", 1)[1] for c in cols], dtype=object)
        return np.where(block.any(axis=1), values[pick], "none"), field
    edges = np.quantile(degree, [0.25, 0.5, 0.75])
    q = np.searchsorted(edges, degree, side="right")
    return np.array([f"Q{i + 1}" for i in q], dtype=object), "popularity quartile"


def embedding_map(matrix: np.ndarray, labels: np.ndarray, what: str, out: Path, *,
                  max_points: int, seed: int) -> None:
    """t-SNE of (a seeded sample of) the item embeddings, coloured by ``labels``."""
    from sklearn.manifold import TSNE
    n = len(matrix)
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, max(2.0, (len(rows) - 1) / 3)),
              metric="cosine", max_iter=TSNE_ITERATIONS, random_state=seed).fit_transform(matrix[rows])
    lab = labels[rows]
    values, counts = np.unique(lab, return_counts=True)
    top = [v for _, v in sorted(zip(-counts, values))][:MAP_CATEGORIES]
    lab = np.where(np.isin(lab, top), lab, "other")
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20")
    order = top + (["other"] if (lab == "other").any() else [])
    for i, v in enumerate(order):
        sel = lab == v
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7,
                   color="lightgrey" if v == "other" else cmap(i % 20), label=f"{v} ({sel.sum()})")
    ax.set_title(f"t-SNE of {len(rows)} item embeddings, coloured by {what}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


PLOTS = {"training_curves.png": "Training curves", "hit_rate_at_k.png": "Hit-rate@K",
         "embedding_map.png": "Item embeddings (t-SNE)"}


def html_report(metrics: dict, examples: list[dict], rep: Path) -> Path:
    """``rep/report.html``: one self-contained page (plots embedded) a person can open.

    The metrics table with CIs, the paired comparison with the best baseline,
    the plots present in ``rep``, and ``examples``: held-out queries with the
    top items of PinSage and of the best baseline, the held-out target marked.
    """
    e = html.escape
    ks = [f"hit_rate@{k}" for k in metrics["ks"]] + ["mrr"]
    rows = "".join(
        f"<tr><th>{e(name)}</th>" + "".join(
            f"<td>{m[k]:.4f} <small>[{m['ci95'][k][0]:.4f}, {m['ci95'][k][1]:.4f}]</small></td>"
            for k in ks) + "</tr>"
        for name, m in metrics["methods"].items())
    parts = [f"<h1>{e(metrics['dataset'])}: {e(metrics['protocol'])}, "
             f"{metrics['num_queries']:,} {e(metrics['split'])} queries over "
             f"{metrics['num_items']:,} items</h1>",
             f"<table id='metrics'><tr><th>method</th>{''.join(f'<th>{e(k)}</th>' for k in ks)}"
             f"</tr>{rows}</table>"]
    vs = metrics.get("vs_best_baseline")
    if vs:
        d, ci = vs["difference"], vs["ci95"]
        parts.append(f"<p id='paired'>pinsage &minus; {e(vs['baseline'])} (best baseline, paired, "
                     f"95% CI): " + ", ".join(f"{e(k)} {d[k]:+.4f} [{ci[k][0]:+.4f}, "
                                              f"{ci[k][1]:+.4f}]" for k in ks) + "</p>")
    for note, text in metrics.get("notes", {}).items():
        parts.append(f"<p class='note'>note: {e(note)}: {e(text)}</p>")
    for file, title in PLOTS.items():
        if (rep / file).exists():
            data = base64.b64encode((rep / file).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(title)}</figcaption></figure>")
    if examples:
        parts.append("<h2>Examples: held-out queries and the items each method returns</h2>"
                     "<p>The held-out target is marked &#9733; where it appears.</p>")
    for ex in examples:
        cols = "".join(
            f"<td><b>{e(method)}</b><ol>" + "".join(
                f"<li class='{'hit' if hit else ''}'>{'&#9733; ' if hit else ''}{e(name)}</li>"
                for name, hit in items) + "</ol></td>"
            for method, items in ex["methods"].items())
        parts.append(f"<table class='example'><caption>query: <b>{e(ex['query'])}</b> &mdash; "
                     f"held-out target: {e(ex['target'])}</caption><tr>{cols}</tr></table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;vertical-align:top}img{max-width:100%}.hit{font-weight:bold;"
             "color:#060}.note{color:#666}")
    out = rep / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                   f"{e(metrics['dataset'])} evaluation</title><style>{style}</style></head>"
                   f"<body>{''.join(parts)}</body></html>\n")
    return out
