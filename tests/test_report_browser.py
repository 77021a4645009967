"""report.html in a real browser: headless Chromium renders the table, the plots and the examples.

The page is written by the report code of an evaluation (pipeline.evaluate.report and
run.examples) from a small real ranking: item embeddings, their top-k, ranks, bootstrap
CIs and a TensorBoard log, without Spark. Chromium then dumps the DOM of a copy with a
probe script appended (what the browser rendered: the table's cells, each image's natural
and laid-out size, the examples, any network request) and screenshots the page itself.
Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped without it.
"""
from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline import metrics as M
from pipeline.evaluate import report
from pipeline.evaluate.run import examples

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
WIDTH, HEIGHT = 1280, 2000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser: {CHROMIUM} is absent "
                       "(Debian: apt-get install chromium; .ci/run installs it)"),
]

# Appended to a copy of report.html: once everything is loaded, what the browser made of the
# page goes, as JSON, into <pre id="probe">, which --dump-dom then carries out.
PROBE = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect();
                     return [Math.round(r.left), Math.round(r.top), Math.round(r.width),
                             Math.round(r.height)]; };
  const metrics = document.getElementById("metrics");
  const probe = {
    metrics: [...metrics.rows].map(r => [...r.cells].map(c => c.innerText.trim())),
    metrics_box: box(metrics),
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
             natural: [i.naturalWidth, i.naturalHeight], box: box(i)})),
    examples: [...document.querySelectorAll("table.example")].map(t => ({
      caption: t.caption.innerText.trim(), box: box(t),
      methods: [...t.rows[0].cells].map(c => ({
        name: c.querySelector("b").innerText,
        items: [...c.querySelectorAll("li")].map(li => [li.className, li.innerText.trim()])}))
    })),
    requests: performance.getEntriesByType("resource").map(e => e.name),
    height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium(tmp: Path, *args: str, height: int = HEIGHT) -> str:
    """Run headless Chromium with its own profile in a WIDTH x ``height`` window; its stdout.
    Its whole process group is killed if it hangs."""
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--window-size={WIDTH},{height}",
                             f"--user-data-dir={tmp / 'profile'}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """A small evaluation's report directory: ``(report.html, metrics, examples, rep)``."""
    from torch.utils.tensorboard import SummaryWriter
    tmp = tmp_path_factory.mktemp("report")
    g = np.random.default_rng(0)
    n_items, n_rows, ks = 60, 40, [5, 10]
    kmax = max(ks)
    ids = [f"i{j}" for j in range(n_items)]
    # Readable names with characters the page must escape.
    names = {i: f"Film {j} <{1950 + j}> & co" for j, i in enumerate(ids)}
    genres = ["Drama", "Comedy", "Horror"]
    features = np.eye(len(genres))[g.integers(0, len(genres), n_items)]
    degree = g.integers(1, 50, n_items)
    matrix = g.normal(size=(n_items, 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = g.integers(0, n_items, n_rows)
    # PinSage's top by cosine, popularity's by degree; the query itself never listed.
    by_cosine = np.argsort(-(matrix[queries] @ matrix.T), axis=1, kind="stable")
    by_degree = np.tile(np.argsort(-degree, kind="stable"), (n_rows, 1))
    tops = {"pinsage": M.drop_query(by_cosine[:, :kmax + 1], queries, kmax),
            "popularity": M.drop_query(by_degree[:, :kmax + 1], queries, kmax)}
    # Held-out targets: every other one PinSage's third neighbour, the rest at random.
    targets = (queries + g.integers(1, n_items, n_rows)) % n_items
    targets[::2] = tops["pinsage"][::2, 2]
    ranks = {name: M.target_ranks(top, targets) for name, top in tops.items()}
    per_query = {name: M.per_query(r, ks) for name, r in ranks.items()}
    per_query["pinsage - popularity"] = {k: per_query["pinsage"][k] - per_query["popularity"][k]
                                         for k in per_query["pinsage"]}
    ci = M.bootstrap_ci(per_query, 200, 0)
    metrics = {"dataset": "tiny", "protocol": "leave_last_out", "split": "test",
               "num_queries": n_rows, "num_items": n_items, "ks": ks, "bootstrap": 200,
               "methods": {name: {**M.summarize(r, ks), "ci95": ci[name]}
                           for name, r in ranks.items()},
               "notes": {"features_only": "skipped: a note the page shows"},
               "vs_best_baseline": {
                   "baseline": "popularity", "ci95": ci["pinsage - popularity"],
                   "difference": {k: float(v.mean())
                                  for k, v in per_query["pinsage - popularity"].items()}}}
    tb = tmp / "tensorboard"
    with SummaryWriter(str(tb)) as writer:
        for step in range(1, 6):
            writer.add_scalar("train/loss", 2.0 / step, step)
            writer.add_scalar("val/hit_rate@10", 0.1 * step, step)
    rep = tmp / "report"
    rep.mkdir()
    assert report.training_curves(tb, rep / "training_curves.png") is None
    report.hit_rate_curves(ranks, kmax, rep / "hit_rate_at_k.png")
    labels, what = report.categories(features, [f"genre={x}" for x in genres], degree)
    report.embedding_map(matrix, labels, what, rep / "embedding_map.png", max_points=50, seed=0)
    held_out = type("HeldOut", (), {"queries": queries, "targets": targets})
    shown = examples(held_out, tops, ids, names, 4, seed=0)
    return report.html_report(metrics, shown, rep), metrics, shown, rep


def test_report_renders_in_chromium(evaluation, tmp_path):
    page, metrics, shown, rep = evaluation
    probed = tmp_path / "probed.html"          # elsewhere: the page needs no file beside it
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; the DOM ends: {dom[-500:]}"
    probe = json.loads(html.unescape(found.group(1)))

    # The metrics table: a header and one row per method, the numbers as in metrics.json.
    ks = [f"hit_rate@{k}" for k in metrics["ks"]] + ["mrr"]
    assert probe["metrics"][0] == ["method", *ks]
    assert [row[0] for row in probe["metrics"][1:]] == list(metrics["methods"])
    for row, m in zip(probe["metrics"][1:], metrics["methods"].values()):
        assert row[1:] == [f"{m[k]:.4f} [{m['ci95'][k][0]:.4f}, {m['ci95'][k][1]:.4f}]"
                           for k in ks]
    assert probe["metrics_box"][2] > 200 and probe["metrics_box"][3] > 50

    # The three plots decoded at their PNG size and laid out on the page.
    assert [i["alt"] for i in probe["images"]] == list(report.PLOTS.values())
    for img, file in zip(probe["images"], report.PLOTS):
        h, w = _png(rep / file).shape[:2]
        assert img["complete"] and img["natural"] == [w, h], img
        assert img["box"][2] > 100 and img["box"][3] > 100, img

    # The examples: query, target, each method's top 10 by name, the target starred.
    assert len(probe["examples"]) == len(shown) == 4
    for got, ex in zip(probe["examples"], shown):
        assert got["caption"] == f"query: {ex['query']} — held-out target: {ex['target']}"
        assert [m["name"] for m in got["methods"]] == ["pinsage", "popularity"]
        for m in got["methods"]:
            expect = ex["methods"][m["name"]]
            assert len(m["items"]) == len(expect) == 10
            assert m["items"] == [["hit" if hit else "", f"★ {n}" if hit else n]
                                  for n, hit in expect]
    assert any(hit for ex in shown for items in ex["methods"].values() for _, hit in items)
    assert "Film" in probe["examples"][0]["caption"] and "<" in probe["examples"][0]["caption"]

    # Self-contained: the browser fetched nothing.
    assert not [r for r in probe["requests"] if not r.startswith("data:")], probe["requests"]

    # A screenshot of the page itself, in a window as tall as the page: the window's size,
    # not blank, and painted where the table, each plot and each example lie.
    shot = tmp_path / "report.png"
    height = max(HEIGHT, probe["height"])
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri(), height=height)
    pixels = _png(shot)[..., :3]
    assert pixels.shape == (height, WIDTH, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50          # text, lines, colours
    for x, y, w, h in [probe["metrics_box"], *(i["box"] for i in probe["images"]),
                       *(e["box"] for e in probe["examples"])]:
        region = pixels[y:y + h, x:x + w]
        assert region.size and region.std() > 0.05                      # drawn, not blank
        assert (region.min(axis=2) < 0.5).mean() > 0.005                  # dark ink: text, lines
    if os.environ.get("REPORT_SCREENSHOT"):                  # keep it to look at
        Path(os.environ["REPORT_SCREENSHOT"]).write_bytes(shot.read_bytes())


def _png(path: Path) -> np.ndarray:
    from matplotlib.image import imread
    return imread(str(path))
