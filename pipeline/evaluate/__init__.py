"""Evaluation: PinSage against baselines on the split's held-out interactions.

Publishes two stages:

* ``index``: an approximate nearest-neighbour index (faiss HNSW or IVF) over
  the published ``embeddings``, for serving (:mod:`pipeline.serve`), with its
  recall@K against exact search in the manifest;
* ``eval``: ``metrics.json`` (hit-rate@K, MRR and bootstrap 95% CIs per
  method) and ``report/`` (the Markdown table and PNG plots).

Every method answers the same queries over the same candidates (every item
but the query) and is scored by the same code (:mod:`pipeline.metrics`); every
baseline sees only the split's training edges.

The names below load on first use (PEP 562), so serving, which reads the
``index`` stage's layout from :mod:`.index`, does not pull in implicit,
scikit-learn and matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "run_evaluate": "pipeline.evaluate.run",
    "print_summary": "pipeline.evaluate.run",
    "EvalResult": "pipeline.evaluate.run",
    "lineage": "pipeline.evaluate.run",
    "BASELINES": "pipeline.evaluate.run",
    "STAGE": "pipeline.evaluate.run",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.evaluate' has no attribute {name!r}")


__all__ = list(_EXPORTS)
