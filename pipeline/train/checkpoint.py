"""Checkpoints as plain tensors and numbers (``torch.load(weights_only=True)`` safe)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

KEEP = 2


def save(directory: Path, step: int, state: dict) -> Path:
    """Write ``ckpt-<step>.pt`` atomically; keep the newest ``KEEP``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{step:09d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict | None:
    found = sorted(directory.glob("ckpt-*.pt")) if directory.is_dir() else []
    if not found:
        return None
    return torch.load(found[-1], map_location="cpu", weights_only=True)
