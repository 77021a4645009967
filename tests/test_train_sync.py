"""The training step reads nothing back from the device: losses are read every
``train.log_every`` steps and at each epoch end, in one transfer, and nowhere else.

On a GPU any such read (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``...)
waits for the device to finish its queued work, which would undo the overlap
the producer-consumer loader buys. On CPU the reads are counted by patching
them; on CUDA, ``torch.cuda.set_sync_debug_mode("error")`` turns any
synchronisation in the steps into an error.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_train import _small_run

from pipeline.train import loader as loader_mod
from pipeline.train import trainer
from pipeline.train.trainer import run_train

PIPELINE = str(Path(trainer.__file__).resolve().parent.parent) + "/"
# Every way Python code reads a tensor's value onto the host.
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__")
LOG_EVERY = 3


class Reads:
    """Patches the tensor reads; records those made by pipeline code, with where and when.

    A read counts when a pipeline function is on the stack and the read is not
    torch.optim's own (Adam keeps its step counters on the host even when it
    trains on a GPU). ``in_steps``: made between an epoch's first minibatch
    loss and the loader's close, i.e. inside the step loop.
    """

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        self.in_steps = False
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        batch_loss, close = trainer.batch_loss, loader_mod.BatchLoader.__exit__

        def first_loss(*a, **kw):
            self.in_steps = True
            return batch_loss(*a, **kw)

        def closed(loader, *exc):
            self.in_steps = False
            return close(loader, *exc)
        monkeypatch.setattr(trainer, "batch_loss", first_loss)
        monkeypatch.setattr(loader_mod.BatchLoader, "__exit__", closed)

    def _wrap(self, name, original):
        def read(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            if "torch/optim/" not in frame.f_code.co_filename:
                self._record(name, frame)
            return original(tensor, *args, **kwargs)
        return read

    def _record(self, name: str, frame) -> None:
        where, step, files = None, None, set()
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(PIPELINE):
                rel = path[len(PIPELINE):]
                files.add(rel)
                if where is None:
                    where = (rel, frame.f_code.co_qualname)
                if frame.f_code.co_qualname == "_Training.run_epoch":
                    step = frame.f_locals["self"].step
            frame = frame.f_back
        if where is not None:
            self.calls.append({"read": name, "where": where, "step": step, "files": files,
                               "in_steps": self.in_steps})


def _expected_reads(history: list[dict], k: int) -> list[int]:
    """Steps at which the losses are read: every k steps of each epoch, and at its end."""
    out, start = [], 0
    for rec in history:
        end = rec["steps"]
        out += list(range(start + k, end + 1, k))
        if (end - start) % k:
            out.append(end)
        start = end
    return out


def test_a_training_step_reads_nothing_back_from_the_device(spark, make_cfg, tmp_path,
                                                              monkeypatch):
    """Real steps on a small real graph: with log_every=3 the only reads in the step loop
    are the losses' (one .tolist() each third step), plus one at each epoch end; the
    progress bar and TensorBoard still get every step's losses."""
    cfg = _small_run(spark, make_cfg, tmp_path, "sync", "train.epochs=2",
                     "train.max_hard_negatives=1", "train.learn_temperature=true",
                     f"train.log_every={LOG_EVERY}", "train.checkpoint_every=0",
                     "train.device=cpu")
    postfixes = []
    monkeypatch.setattr(trainer.tqdm, "set_postfix",
                        lambda bar, **kw: postfixes.append(kw["loss"]))
    reads = Reads(monkeypatch)
    result = run_train(cfg)
    monkeypatch.undo()
    history = result.history
    steps = history[-1]["steps"]
    assert steps >= 2 * LOG_EVERY and history[0]["steps"] % LOG_EVERY      # an epoch-end read
    assert history[1]["loss_hard"] is not None                              # the curriculum's

    in_loader = [c for c in reads.calls if "train/loader.py" in c["files"]]
    assert in_loader == []
    loss_reads = [c for c in reads.calls if c["where"] == ("train/trainer.py", "StepLosses.read")]
    others_in_steps = [c for c in reads.calls if c["in_steps"] and c not in loss_reads]
    assert others_in_steps == []
    assert [c["read"] for c in loss_reads] == ["tolist"] * len(loss_reads)
    expected = _expected_reads(history, LOG_EVERY)
    assert [c["step"] for c in loss_reads] == expected
    assert len(postfixes) == len(expected)

    # TensorBoard got each step's losses, whose epoch means are the history's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    runs = list((Path(cfg.run_dir) / "_tensorboard").iterdir())
    assert len(runs) == 1
    acc = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, steps + 1))
    first = [e.value for e in losses[:history[0]["steps"]]]
    assert sum(first) / len(first) == pytest.approx(history[0]["loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/loss_hard")] == list(
        range(history[0]["steps"] + 1, steps + 1))
    assert postfixes[-1] == f"{losses[-1].value:.4f}"

    # How often losses are read changes no model.
    cfg.train.log_every = 7
    assert run_train(cfg).reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_training_step_on_cuda_never_synchronises(spark, make_cfg, tmp_path, monkeypatch):
    """set_sync_debug_mode("error") from an epoch's first loss to the loader's close,
    lifted only while the losses are read every log_every steps."""
    cfg = _small_run(spark, make_cfg, tmp_path, "cuda", "train.epochs=2",
                     "train.max_hard_negatives=1", "train.learn_temperature=true",
                     f"train.log_every={LOG_EVERY}", "train.checkpoint_every=0",
                     "train.device=cuda")
    batch_loss, close, read = (trainer.batch_loss, loader_mod.BatchLoader.__exit__,
                               trainer.StepLosses.read)
    steps = []

    def strict_loss(*a, **kw):
        torch.cuda.set_sync_debug_mode("error")
        steps.append(1)
        return batch_loss(*a, **kw)

    def lenient_read(losses):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return read(losses)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def closed(loader, *exc):
        torch.cuda.set_sync_debug_mode("default")
        return close(loader, *exc)
    monkeypatch.setattr(trainer, "batch_loss", strict_loss)
    monkeypatch.setattr(trainer.StepLosses, "read", lenient_read)
    monkeypatch.setattr(loader_mod.BatchLoader, "__exit__", closed)
    try:
        result = run_train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps) == result.history[-1]["steps"] >= 2 * LOG_EVERY
