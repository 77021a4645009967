"""Checkpoints as plain tensors and numbers (``torch.load(weights_only=True)`` safe)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

KEEP = 2


def save(directory: Path, step: int, state: dict) -> Path:
    """Write ``ckpt-<step>.pt`` atomically; keep the newest ``KEEP``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:09d}.pt"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())          # on disk before the name says it is complete
    os.replace(tmp, path)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict | None:
    """The newest checkpoint that loads; a damaged one (a disk fault) falls back to the one before."""
    found = sorted(directory.glob("ckpt-*.pt")) if directory.is_dir() else []
    for path in reversed(found):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:        # torch raises RuntimeError, EOFError or pickle errors
            log.warning("checkpoint %s cannot be read (%s: %s); trying the one before",
                        path, type(e).__name__, e)
    return None
