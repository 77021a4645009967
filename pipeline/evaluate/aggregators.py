"""``eval.compare_aggregators``: one extra PinSage model per other aggregator.

Each variant is trained by the ordinary trainer on the SAME split,
neighbourhoods and minibatches, in its own run directory
``<run_dir>/_compare/aggregator=<name>/`` whose input stages are links to the
main run's. That keeps the main run's ``model`` stage (what inference and
serving use) untouched, and a re-run reuses each variant's published model.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline.evaluate.embed import embed_items

log = logging.getLogger(__name__)

INPUT_STAGES = ("graph", "split", "neighbors", "batches")


def variant_dir(run_dir: str, aggregator: str) -> Path:
    """A run directory sharing ``run_dir``'s input stages (linked, not copied)."""
    sub = Path(run_dir) / "_compare" / f"aggregator={aggregator}"
    sub.mkdir(parents=True, exist_ok=True)
    for stage in INPUT_STAGES:
        link, target = sub / stage, (Path(run_dir) / stage).resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return sub


def train_and_embed(cfg, aggregator: str) -> tuple[np.ndarray, str]:
    """Train (or reuse) the ``aggregator`` variant; ``(item embeddings, model version)``."""
    from pipeline.train.trainer import run_train
    sub = variant_dir(cfg.run_dir, aggregator)
    variant = OmegaConf.merge(cfg, {"run_dir": str(sub), "model": {"aggregator": aggregator},
                                    "train": {"resume": False}})
    result = run_train(variant)
    log.info("aggregator %s: model/%s%s", aggregator, result.version,
             " (reused)" if result.reused else "")
    return embed_items(str(sub), result.version), result.version
