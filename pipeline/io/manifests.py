"""Typed views of the manifests one stage reads of another: the contract, declared once.

A stage writes its manifest as JSON (``pipeline.io.versioned``); whoever
reads another stage's manifest goes through these classes, so a renamed or
missing field fails here, by name, instead of deep inside a consumer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.io import versioned
from pipeline.io.kinds import ITEM


def _read(run_dir: str | os.PathLike, stage: str, version: str | None) -> dict:
    return versioned.read_manifest(run_dir, stage, version)


@dataclass(frozen=True)
class GraphManifest:
    version: str
    n_items: int                # item ids are 0 .. n_items - 1 (removed items' placeholders too)
    n_nodes: int                # items, then users on a bipartite graph
    bipartite: bool
    feature_dim: int
    feature_names: list[str]
    edges: int
    counts: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> GraphManifest:
        return cls.of(_read(run_dir, "graph", version))

    @classmethod
    def of(cls, m: dict) -> GraphManifest:
        """From a graph manifest already read (``pipeline.ingest.read_graph`` returns one)."""
        c = m["counts"]
        return cls(version=m["version"], n_items=int(c["nodes"].get(ITEM, 0)),
                   n_nodes=int(c["nodes_out"]), bipartite=bool(m["bipartite"]),
                   feature_dim=int(c.get("feature_dim", 0)),
                   feature_names=list(m.get("feature_names") or []), edges=int(c["edges_out"]),
                   counts=c)


@dataclass(frozen=True)
class SplitManifest:
    version: str
    graph: str                  # the graph version it split
    protocol: str
    base_protocol: str | None   # eval.protocol=new_items: the protocol it held rows out by
    source_split: str | None    # an inductive view: the evaluated split it was cut from
    counts: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> SplitManifest:
        m = _read(run_dir, "split", version)
        return cls(version=m["version"], graph=m["inputs"]["graph"], protocol=m["protocol"],
                   base_protocol=m.get("base_protocol"), source_split=m.get("source_split"),
                   counts=m["counts"])


@dataclass(frozen=True)
class NeighborsManifest:
    version: str
    split: str
    num_neighbors: int          # T
    hard_window_ranks: tuple[int, int]
    params: dict[str, Any]      # what ranked them (``pipeline.sampling.neighbor_params``)
    code: dict[str, str] | None

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> NeighborsManifest:
        m = _read(run_dir, "neighbors", version)
        return cls(version=m["version"], split=m["inputs"]["split"],
                   num_neighbors=int(m["config"]["num_neighbors"]),
                   hard_window_ranks=tuple(m["counts"]["hard_window_ranks"]),
                   params=m["config"], code=m.get("code"))


@dataclass(frozen=True)
class BatchesManifest:
    version: str
    num_layers: int             # K of the computation graphs they hold
    easy_negatives: int         # pool stored per minibatch
    hard_candidates: int        # per query; 0 when the curriculum is off
    train_batches: int

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> BatchesManifest:
        m = _read(run_dir, "batches", version)
        c = m["counts"]
        return cls(version=m["version"], num_layers=int(c["num_layers"]),
                   easy_negatives=int(c["easy_negatives"]),
                   hard_candidates=int(c.get("hard_candidates", 0)),
                   train_batches=int(c.get("train_batches", 0)))


@dataclass(frozen=True)
class ModelManifest:
    version: str
    spec: dict[str, Any]        # what rebuilds the network (``pipeline.model.build_model``)
    tensorboard: str | None     # the training run's TensorBoard dir, relative to the run
    bias_scale: dict | None     # ``model.item_bias``: the scale chosen on validation
    history: list[dict]
    inputs: dict[str, str]

    @property
    def num_neighbors(self) -> int:
        return int(self.spec["num_neighbors"])

    @property
    def aggregator(self) -> str:
        return str(self.spec["aggregator"])

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> ModelManifest:
        m = _read(run_dir, "model", version)
        return cls(version=m["version"], spec=m["model"], tensorboard=m.get("tensorboard"),
                   bias_scale=m.get("bias_scale"), history=m.get("history", []),
                   inputs=m["inputs"])
