"""Typed views of the manifests one stage reads of another: the contract, declared once.

A stage writes its manifest as JSON (``pipeline.io.versioned``); whoever
reads another stage's manifest goes through these classes, so a renamed or
missing field fails here, by name, instead of deep inside a consumer. Each
view's ``entries()`` is the inverse of its reading: the manifest entries it is
read from, for whoever stands in for the stage (tests publish their inputs
with them, and check them against the manifests the real stages write).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from pipeline.io import versioned
from pipeline.io.kinds import ITEM


def _read(run_dir: str | os.PathLike, stage: str, version: str | None) -> dict:
    return versioned.read_manifest(run_dir, stage, version)


@dataclass(frozen=True)
class GraphManifest:
    n_items: int                # item ids are 0 .. n_items - 1 (removed items' placeholders too)
    n_nodes: int                # items, then users on a bipartite graph
    bipartite: bool
    feature_dim: int
    feature_names: list[str] = field(default_factory=list)
    edges: int = 0
    counts: dict[str, Any] = field(default_factory=dict)   # every count ingest made
    version: str = ""           # the version read ('' for one being published)

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

    def entries(self) -> dict:
        """What :meth:`of` reads, as ingest writes it."""
        counts = {**self.counts, "nodes": {**self.counts.get("nodes", {}), ITEM: self.n_items},
                  "nodes_out": self.n_nodes, "feature_dim": self.feature_dim,
                  "edges_out": self.edges}
        return {"bipartite": self.bipartite, "feature_names": list(self.feature_names),
                "counts": counts}


@dataclass(frozen=True)
class SplitManifest:
    version: str
    graph: str                  # the graph version it split
    protocol: str
    base_protocol: str | None   # split.protocol=new_items: the protocol it held rows out by
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
    num_neighbors: int          # T
    hard_window_ranks: tuple[int, int] = (0, 0)
    params: dict[str, Any] = field(default_factory=dict)  # what ranked them (neighbor_params)
    code: dict[str, str] | None = None
    split: str = ""             # its input (the publisher records it)
    version: str = ""           # the version read ('' for one being published)

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> NeighborsManifest:
        m = _read(run_dir, "neighbors", version)
        return cls(version=m["version"], split=m["inputs"]["split"],
                   num_neighbors=int(m["config"]["num_neighbors"]),
                   hard_window_ranks=tuple(m["counts"]["hard_window_ranks"]),
                   params=m["config"], code=m.get("code"))

    def entries(self) -> dict:
        """What :meth:`read` reads but the inputs, as sampling writes it."""
        return {"config": {**self.params, "num_neighbors": self.num_neighbors},
                "counts": {"hard_window_ranks": list(self.hard_window_ranks)},
                "code": self.code}


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
    spec: dict[str, Any]        # what rebuilds the network (``pipeline.model.build_model``)
    tensorboard: str | None = None     # the training run's TensorBoard dir, relative to the run
    bias_scale: dict | None = None     # ``model.item_bias``: the scale chosen on validation
    history: list[dict] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)   # (the publisher records them)
    version: str = ""           # the version read ('' for one being published)

    @classmethod
    def for_config(cls, cfg_model, feature_dim: int, num_items: int, num_neighbors: int
                   ) -> ModelManifest:
        """A model of ``cfg_model`` (``model.*``) built for these dimensions, its spec as the
        trainer records it."""
        return cls(spec={"feature_dim": int(feature_dim), "num_items": int(num_items),
                         "num_neighbors": int(num_neighbors),
                         **OmegaConf.to_container(cfg_model, resolve=True)})

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

    def entries(self) -> dict:
        """What :meth:`read` reads but the inputs, as the trainer writes it."""
        return {"model": self.spec, "tensorboard": self.tensorboard,
                "bias_scale": self.bias_scale, "history": self.history}


@dataclass(frozen=True)
class ReleaseManifest:
    versions: dict[str, str]    # stage -> the version the release serves (pruning spares them)
    metrics: dict[str, Any] = field(default_factory=dict)  # what the release gate checked
    counts: dict[str, Any] = field(default_factory=dict)
    previous: str | None = None  # the release it replaced
    version: str = ""           # the version read ('' for one being published)

    @classmethod
    def read(cls, run_dir: str | os.PathLike, version: str | None = None) -> ReleaseManifest:
        m = _read(run_dir, versioned.RELEASE, version)
        return cls(version=m["version"], versions=dict(m["versions"]),
                   metrics=m.get("metrics", {}), counts=m.get("counts", {}),
                   previous=m.get("previous"))

    @classmethod
    def current(cls, run_dir: str | os.PathLike) -> ReleaseManifest | None:
        """The current release, or None before the first one."""
        if versioned.latest_version(run_dir, versioned.RELEASE) is None:
            return None
        return cls.read(run_dir)

    def entries(self) -> dict:
        """What :meth:`read` reads, as the refresh writes it."""
        return {"versions": self.versions, "metrics": self.metrics, "counts": self.counts,
                "previous": self.previous}


def released_versions(run_dir: str | os.PathLike, stage: str) -> set[str]:
    """The versions of ``stage`` that some kept release names (pruning spares them)."""
    named = (ReleaseManifest.read(run_dir, r).versions.get(stage)
             for r in versioned.list_versions(run_dir, versioned.RELEASE))
    return {v for v in named if v is not None}


def served_version(run_dir: str | os.PathLike, stage: str) -> str | None:
    """The version of ``stage`` the current release names; ``_LATEST`` before any release.

    What serving reads: a job run after the release may have published a
    newer version that no refresh has checked yet.
    """
    release = ReleaseManifest.current(run_dir)
    named = release.versions.get(stage) if release is not None else None
    return named if named is not None else versioned.latest_version(run_dir, stage)
