"""The stage runner: the one place that fingerprints, reuses and publishes a stage's output.

Every stage (``graph`` … ``release``) declares what its output depends on —
its input versions, its parameters, and the modules whose source computes
it — and asks :meth:`Stage.reusable` before doing any work, then writes
inside :meth:`Stage.publish`. The fingerprint is exactly those three
things, so a stage is rebuilt when and only when one of them changes:
editing a walk kernel rebuilds ``neighbors`` and what follows; a
reporting-only setting, left out of ``params``, rebuilds nothing. Publishing
is atomic, prunes old versions (never one a kept release names: the runner
tells the core which) and sweeps dead writers' debris (``pipeline.io.versioned``).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.io import versioned
from pipeline.io.code import PACKAGE, code_version
from pipeline.io.manifests import released_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """What a stage reads and which code computes it."""

    inputs: tuple[str, ...]                 # stages whose versions it reads
    code: tuple[str, ...]                   # modules computing it (with what they import)
    glue: tuple[str, ...] = ()              # orchestrators: their own source only


_SAMPLING = ("pipeline.sampling",)
# The stage graph, in data-flow order. ``release`` names whatever it serves.
GRAPH: dict[str, Spec] = {
    "graph": Spec((), ("pipeline.ingest",)),
    # source_split: the evaluated split whose inductive view this is (split.protocol=new_items).
    "split": Spec(("graph", "source_split"),
                  ("pipeline.split.protocols", "pipeline.split.new_items"), ("pipeline.split",)),
    "neighbors": Spec(("split",), ("pipeline.sampling.memory_mode", "pipeline.sampling.join_mode",
                                   "pipeline.sampling.incremental"), _SAMPLING),
    "pairs": Spec(("split", "neighbors"), ("pipeline.sampling.pairs",), _SAMPLING),
    "batches": Spec(("pairs", "neighbors"), ("pipeline.sampling.batches", "pipeline.io.arrays"),
                    _SAMPLING),
    "model": Spec(("graph", "split", "neighbors", "batches"), ("pipeline.train.trainer",)),
    "embeddings": Spec(("model", "neighbors", "graph"), ("pipeline.infer",)),
    "index": Spec(("embeddings",), ("pipeline.evaluate.index",)),
    "eval": Spec(("split", "embeddings", "index"), ("pipeline.evaluate.run",)),
    "ablation": Spec(("graph", "split"), ("pipeline.ablate",)),
    "compare": Spec(("graph", "split", "neighbors", "batches"), ("pipeline.evaluate.compare",)),
    "release": Spec(("graph", "split", "neighbors", "pairs", "batches", "model", "embeddings",
                     "index"), ("pipeline.refresh",)),
}


def code_hashes(name: str, root: str = str(PACKAGE)) -> dict[str, str]:
    """Module -> source hash of what computes stage ``name`` (under ``root``)."""
    spec = GRAPH[name]
    return {**{m: code_version(m, root) for m in spec.code},
            **{m: code_version(m, root, imports=False) for m in spec.glue}}


@dataclass
class Stage:
    run_dir: str
    name: str
    inputs: dict[str, str]                  # input stage -> the version read
    params: dict[str, Any]                  # every setting the output depends on, nothing else
    keep: int = 3                           # versions kept by pruning
    force: bool = False                     # rebuild even when a matching version exists
    recorded_inputs: dict[str, str] = field(default_factory=dict)  # lineage for the manifest (wins)

    def __post_init__(self):
        declared = set(GRAPH[self.name].inputs)
        if not set(self.inputs) <= declared:
            raise ValueError(f"stage {self.name} reads {sorted(self.inputs)}, declared "
                             f"{sorted(declared)} (pipeline.io.stage.GRAPH)")

    @property
    def code_hashes(self) -> dict[str, str]:
        """In the manifest too, so an incremental run can check the code is the same."""
        return code_hashes(self.name)

    @property
    def fingerprint(self) -> str:
        return versioned.fingerprint({"stage": self.name, "inputs": self.inputs,
                                      "params": self.params, "code": self.code_hashes})

    def reusable(self) -> str | None:
        """The latest version if it was built from exactly these inputs, params and code."""
        if self.force:
            return None
        found = versioned.find_matching(self.run_dir, self.name, self.fingerprint)
        if found:
            log.info("%s/%s already built from these inputs; reusing it", self.name, found)
        return found

    def manifest(self, version: str) -> dict:
        return versioned.read_manifest(self.run_dir, self.name, version)

    @contextmanager
    def publish(self) -> Iterator[versioned.Staging]:
        """Stage a new version, published only if the ``with`` body succeeds."""
        with versioned.publish(self.run_dir, self.name, self.fingerprint, config=self.params,
                               inputs={**self.inputs, **self.recorded_inputs},
                               keep=self.keep,
                               spared=released_versions(self.run_dir, self.name)) as out:
            out.manifest["code"] = self.code_hashes
            yield out
