"""Training: PinSage on the sampled minibatches, sampled-softmax or max-margin loss,
hard-negative curriculum.

One function, :func:`run_train`, runs single-process or under ``torchrun``
(DistributedDataParallel: each rank reads a disjoint set of minibatch files).
Everything random is derived from ``seed``, the epoch and the minibatch id, so
a run resumed from a checkpoint reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.dataset as ds
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.io import versioned
from pipeline.io.manifests import BatchesManifest, ModelManifest, NeighborsManifest
from pipeline.io.stage import Stage
from pipeline.model import build_model
from pipeline.model.loss import (in_batch_collisions, log_expected_count, max_margin_loss,
                                 sampled_softmax_loss)
from pipeline.data.features import cached_feature_store
from pipeline.split import new_items
from pipeline.train import checkpoint, validation
from pipeline.train.loader import BatchLoader, Minibatch, list_batch_files

log = logging.getLogger(__name__)

STAGE = "model"
# The stages a model is trained from (of the inductive view under split.protocol=new_items).
INPUT_STAGES = ("graph", "split", "neighbors", "batches")


@dataclass
class TrainResult:
    version: str | None
    history: list[dict] = field(default_factory=list)
    reused: bool = False
    bias_scale: dict | None = None     # model.item_bias: the scale chosen on validation


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    """Join the torchrun process group when launched by torchrun; no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError("train.device=cuda but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed every generator and use deterministic kernels, so a seed gives one model.

    Without ``use_deterministic_algorithms`` two runs of the same minibatches on
    MovieLens-100K drifted apart at the 7th digit of the first losses and ended 0.005
    apart in validation hit-rate@10 (parallel CPU reductions); with it they are
    bit-identical, at the same speed. CUDA's cuBLAS needs the workspace setting for it.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def curriculum(epoch: int, max_hard: int) -> int:
    """Hard negatives per query in 1-based ``epoch``: n - 1, capped (PinSage's schedule)."""
    return max(0, min(epoch - 1, max_hard))


@dataclass
class Sampling:
    """How a minibatch's candidates were sampled, for the softmax's logQ correction.

    ``p_in_batch``: an item's share of the training pairs' positives (how
    in-batch negatives arise); ``p_easy``: its easy-negative draw probability.
    """

    p_in_batch: torch.Tensor
    p_easy: torch.Tensor

    @classmethod
    def read(cls, batches_dir: Path, device: torch.device) -> "Sampling":
        path = batches_dir / "item_weights"
        if not path.is_dir():
            raise PipelineError(f"{batches_dir} has no item_weights table (sampled by an older "
                                f"version); re-run jobs/sample.py for train.loss=softmax")
        t = ds.dataset(str(path), format="parquet").to_table().sort_by("node")
        f = t.column("positives").to_numpy().astype(np.float64)
        w = t.column("weight").to_numpy()
        return cls(torch.from_numpy(f / max(f.sum(), 1.0)).float().to(device),
                   torch.from_numpy(w / max(w.sum(), 1e-300)).float().to(device))


def batch_loss(model, mb: Minibatch, *, loss: str, margin: float, temperature: float,
               sampling: Sampling | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(total, easy part, hard part or None)`` for one minibatch, on its drawn negatives.

    ``max_margin``: the easy part against the shared easy negatives, the hard
    part against each query's hard negatives. ``softmax``: the easy part is
    the sampled softmax over in-batch and easy negatives; with hard negatives
    the total adds them to the softmax, and the hard part (total - easy part,
    detached) is what they add.
    """
    z = model(mb.nodes, mb.features, mb.nbr_idx, mb.nbr_weight)
    # Queries search with their shifted vector (model.item_bias); DDP wraps the model.
    zq = getattr(model, "module", model).query(z[mb.query], mb.nodes[0][mb.query])
    zp, ze = z[mb.positive], z[mb.easy]
    mask = mb.hard >= 0
    z_hard = z[mb.hard.clamp_min(0)] if mb.hard.shape[1] else None
    if loss == "max_margin":
        loss_easy = max_margin_loss(zq, zp, ze, margin)
        if z_hard is None:
            return loss_easy, loss_easy, None
        loss_hard = max_margin_loss(zq, zp, z_hard, margin, neg_mask=mask)
        return loss_easy + loss_hard, loss_easy, loss_hard
    ids = mb.nodes[0]
    n_b, n_e = len(mb.query), len(mb.easy)
    kw = dict(temperature=temperature, collisions=in_batch_collisions(mb.query, mb.positive),
              log_count_pos=log_expected_count(ids[mb.positive], sampling.p_in_batch,
                                               sampling.p_easy, n_b, n_e),
              log_count_easy=log_expected_count(ids[mb.easy], sampling.p_in_batch,
                                                sampling.p_easy, n_b, n_e))
    if z_hard is None:
        total = sampled_softmax_loss(zq, zp, ze, **kw)
        return total, total, None
    total = sampled_softmax_loss(zq, zp, ze, z_hard=z_hard, hard_mask=mask, **kw)
    with torch.no_grad():
        loss_easy = sampled_softmax_loss(zq, zp, ze, **kw)
    return total, loss_easy, total.detach() - loss_easy


class StepLosses:
    """Each step's ``(total, easy, hard)`` losses, kept on the device until :meth:`read`.

    Reading a number back from a GPU waits for all its queued work, which
    would stall the loader's overlap if done every step; so a step only
    appends its 0-d loss tensors here (no transfer, no sync), and the trainer
    reads them, in one transfer, every ``train.log_every`` steps and at each
    epoch end. A step without a hard part stores NaN in its place.
    """

    def __init__(self):
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, total: torch.Tensor, easy: torch.Tensor,
            hard: torch.Tensor | None) -> None:
        hard = torch.full_like(total, torch.nan) if hard is None else hard
        self.steps.append(step)
        self.values.append(torch.stack([total.detach(), easy.detach(), hard.detach()]))

    def read(self) -> list[tuple[int, float, float, float | None]]:
        """``(step, total, easy, hard or None)`` of the pending steps (one device sync); clears them."""
        if not self.steps:
            return []
        values = torch.stack(self.values).cpu().tolist()
        out = [(at, total, easy, None if math.isnan(hard) else hard)
               for at, (total, easy, hard) in zip(self.steps, values)]
        self.steps, self.values = [], []
        return out


def _validate(cfg) -> None:
    config.check(cfg, "model", "train")
    if not (len(cfg.train.bias_scales) > 0 and min(cfg.train.bias_scales) >= 0):
        raise PipelineError("train.bias_scales must be a non-empty list of numbers >= 0, got "
                            f"{list(cfg.train.bias_scales)}")


def _schedule(optimizer, kind: str, total_steps: int):
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps))))


def unseen_id_rows(model, items: np.ndarray, check: bool = False) -> None:
    """Zero the per-item rows (ID embedding, query offset) of ``items`` (items the model must
    never see), or check them.

    They get no gradient (never in a minibatch), so Adam keeps them at zero:
    at inference such an item is embedded from its features and neighbours alone.
    """
    if len(items) == 0:
        return
    tables = [t for t in (model.id_emb if model.id_embedding == "on" else None,
                          model.query_offset) if t is not None]
    for table in tables:
        rows = torch.as_tensor(items, dtype=torch.int64, device=table.weight.device)
        if check:
            if bool(table.weight[rows].any()):
                raise PipelineError("training: a new item's ID embedding or query offset was "
                                    "trained; the inductive view leaked a new item into the "
                                    "minibatches (re-run jobs/sample.py)")
            continue
        with torch.no_grad():
            table.weight[rows] = 0.0


class LogitScale(torch.nn.Module):
    """The softmax's temperature, as log(1 / temperature), learned with the model or fixed.

    The temperature bounds how far apart two candidates' logits can be (cosines
    lie in [-1, 1]): on a graph whose answers are dominated by a few hubs, a
    fixed 0.1 forces every query's embedding towards the hubs to express their
    prior. Learned, as CLIP learns its logit scale, each graph finds its own;
    it is capped at 1/100 and kept beside the model (inference ranks by cosine,
    which the temperature does not change). In DDP its gradient is averaged by
    hand, as it is not one of the model's parameters.
    """

    MAX_LOG_INV_T = math.log(100.0)

    def __init__(self, temperature: float, learn: bool):
        super().__init__()
        self.fixed = None if learn else float(temperature)
        self.log_inv_t = torch.nn.Parameter(torch.tensor(-math.log(temperature)),
                                            requires_grad=learn)

    def temperature(self) -> torch.Tensor | float:
        if self.fixed is not None:
            return self.fixed
        return torch.exp(-self.log_inv_t.clamp(max=self.MAX_LOG_INV_T))

    def value(self) -> float:
        """The current temperature as a plain number, for the history."""
        return self.fixed if self.fixed is not None else float(self.temperature().detach())

    def all_reduce(self, world: int) -> None:
        grad = self.log_inv_t.grad
        if world > 1 and grad is not None:
            dist.all_reduce(grad)
            grad /= world


# Settings that change how a run goes or what it reports, never the model it publishes.
NOT_IN_FINGERPRINT = ("resume", "prefetch", "num_workers", "device", "val_k", "checkpoint_every",
                      "log_every")


def training_inputs(graph: str, sample) -> dict[str, str]:
    """The versions a model trains on after a sampling run (``SampleResult``): its own, or
    its inductive view's under ``split.protocol=new_items``."""
    view = sample.inductive or sample
    return {"graph": graph, **{s: view.versions[s] for s in INPUT_STAGES if s != "graph"}}


def run_train(cfg, *, inputs: dict[str, str] | None = None, stop_after_epoch: int | None = None,
              inductive: bool = True) -> TrainResult:
    """Train on the minibatches; publish the ``model`` stage (rank 0). ``inputs``: the graph,
    split, neighbors and batches versions (of the inductive view under
    ``split.protocol=new_items``; the latest where not given). ``inductive=False`` trains on
    the run's own minibatches even then (evaluation's ``pinsage_retrained``).
    ``stop_after_epoch`` ends the run after that epoch's checkpoint without publishing, as a
    preempted job would (tests resume from there)."""
    t, run_dir = cfg.train, cfg.run_dir
    _validate(cfg)
    device = _device(t.device)
    ddp = _init_distributed(device)
    # Under split.protocol=new_items the minibatches come from the inductive view.
    view = new_items.training_view(run_dir, inductive)
    inputs = versioned.latest_inputs(view.dir, INPUT_STAGES, "training", inputs)
    params = {"model": OmegaConf.to_container(cfg.model, resolve=True),
              "train": {k: v for k, v in OmegaConf.to_container(t, resolve=True).items()
                        if k not in NOT_IN_FINGERPRINT},
              "seed": int(cfg.seed), "world_size": ddp.world}
    # Lineage names the evaluated split, which the inductive view was cut from.
    stage = Stage(run_dir, STAGE, inputs, params, keep=cfg.keep_versions,
                  force=cfg.force or stop_after_epoch is not None,
                  recorded_inputs={} if view.source_split is None else {
                      "split": view.source_split, "inductive_split": inputs["split"]})
    existing = stage.reusable()
    if existing:
        manifest = ModelManifest.read(run_dir, existing)
        return TrainResult(existing, manifest.history, reused=True, bias_scale=manifest.bias_scale)

    seed_everything(int(cfg.seed))
    data = _TrainingData.open(cfg, view, inputs, ddp, device)
    run = _Training(cfg, data, view, ddp, device, Path(run_dir) / "_checkpoints"
                    / stage.fingerprint[:16])
    val = (validation.Validator(view.dir, inputs, data.store, data.num_neighbors, device,
                                k=t.val_k, margin=t.margin, exclude=view.new)
           if ddp.main else None)
    writer = _tensorboard(run_dir, stage.fingerprint) if ddp.main else None
    if val is not None and writer is not None and run.step == 0:
        writer.add_scalar(f"val/popularity_hit_rate@{t.val_k}", val.popularity_hit_rate, 0)
    try:
        for epoch in range(run.start_epoch, t.epochs + 1):
            record = run.run_epoch(epoch, writer)
            if val is not None:
                run.model.eval()
                record.update(val.evaluate(run.model))
                _log_epoch(writer, record, run.step, t.val_k, val.popularity_hit_rate)
            run.history.append(record)
            run.save(epoch + 1, 0)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return TrainResult(None, run.history)
        if not ddp.main:
            return TrainResult(None, run.history)
        return _publish(stage, run, data, view.new, val, params)
    finally:
        if writer is not None:
            writer.close()
        if ddp.world > 1 and dist.is_initialized():
            dist.barrier()


@dataclass
class _TrainingData:
    """The minibatches one rank trains on, the features they gather and how they were sampled."""

    store: object                  # FeatureStore
    loader: BatchLoader
    sampling: Sampling | None      # train.loss=softmax: the logQ correction's probabilities
    num_neighbors: int
    steps_per_epoch: int

    @classmethod
    def open(cls, cfg, view, inputs: dict, ddp: _Dist, device: torch.device) -> "_TrainingData":
        t, m, src = cfg.train, cfg.model, view.dir
        store = cached_feature_store(src, inputs["graph"])
        batches_dir = versioned.resolve(src, "batches", inputs["batches"])
        stored = BatchesManifest.read(src, inputs["batches"])
        if stored.num_layers != m.num_layers:
            raise PipelineError(f"minibatches were sampled for {stored.num_layers} layers "
                                f"but model.num_layers={m.num_layers}; re-run jobs/sample.py with "
                                f"model.num_layers={m.num_layers}")
        if t.max_hard_negatives > 0 and stored.hard_candidates == 0:
            raise PipelineError(f"train.max_hard_negatives={t.max_hard_negatives} but the "
                                f"minibatches carry no hard candidates; re-run jobs/sample.py "
                                f"with train.max_hard_negatives={t.max_hard_negatives}")
        if t.easy_negatives > stored.easy_negatives:
            log.warning("train.easy_negatives=%d but minibatches store %d (sample.easy_negatives):"
                        " every epoch uses all of them", t.easy_negatives, stored.easy_negatives)
        sampling = Sampling.read(batches_dir, device) if t.loss == "softmax" else None
        T = NeighborsManifest.read(src, inputs["neighbors"]).num_neighbors
        files = list_batch_files(batches_dir, "train", ddp.rank, ddp.world)
        if not files:
            raise PipelineError(f"no training minibatch files for rank {ddp.rank} of {ddp.world} "
                                f"in {batches_dir}/train")
        loader = BatchLoader(files, store, T, prefetch=t.prefetch, num_workers=t.num_workers,
                             pin_memory=device.type == "cuda", seed=int(cfg.seed),
                             easy_negatives=t.easy_negatives, hard_negatives=0)
        steps = len(loader)
        if steps == 0:
            raise PipelineError(
                f"train: batches/{inputs['batches']} holds no training minibatches"
                f"{f' for rank {ddp.rank}' if ddp.world > 1 else ''} ({stored.train_batches} in "
                f"all): no positive pairs to learn from, so no model is published; check that "
                f"the graph's items share users or links after the split (jobs/sample.py's pairs "
                f"counts)")
        if ddp.world > 1:
            # Every rank must take the same number of steps or DDP's all-reduce hangs.
            n = torch.tensor([steps])
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            steps = int(n.item())
        return cls(store, loader, sampling, T, steps)


class _Training:
    """The model, its optimiser and where the run stands (epoch, step, history), with the
    epoch loop and the checkpoints that let a preempted run resume exactly."""

    def __init__(self, cfg, data: _TrainingData, view, ddp: _Dist, device: torch.device,
                 ckpt_dir: Path):
        t = self.t = cfg.train
        self.data, self.ddp, self.device, self.ckpt_dir = data, ddp, device, ckpt_dir
        self.model = build_model(cfg.model, data.store.dim, data.store.num_items).to(device)
        unseen_id_rows(self.model, view.new)
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model) if ddp.world > 1
                    else self.model)
        self.scale = LogitScale(t.temperature,
                                learn=t.learn_temperature and t.loss == "softmax").to(device)
        self.optimizer = torch.optim.Adam([{"params": self.model.parameters()},
                                           {"params": self.scale.parameters(),
                                            "weight_decay": 0.0}],
                                          lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = _schedule(self.optimizer, t.schedule, t.epochs * data.steps_per_epoch)
        self.start_epoch, self.skip, self.step, self.history = 1, 0, 0, []
        if t.resume:
            self._resume()

    def _resume(self) -> None:
        state = checkpoint.load_latest(self.ckpt_dir)
        if state is None:
            log.warning("train.resume=true but no checkpoint in %s; starting from scratch",
                        self.ckpt_dir)
            return
        self.model.load_state_dict(state["model"])
        self.scale.load_state_dict(state["logit_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.skip, self.step = (state["epoch"], state["batch_in_epoch"],
                                                  state["step"])
        self.history = state["history"]
        log.info("resumed from step %d (epoch %d, minibatch %d)", self.step, self.start_epoch,
                 self.skip)

    def save(self, epoch: int, batch_in_epoch: int) -> None:
        if self.ddp.main:
            checkpoint.save(self.ckpt_dir, self.step, {
                "model": self.model.state_dict(), "logit_scale": self.scale.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "step": self.step, "history": self.history})

    def run_epoch(self, epoch: int, writer) -> dict:
        """One epoch's steps (the resumed part of it after a resume); its history record."""
        t, data = self.t, self.data
        n_hard = curriculum(epoch, t.max_hard_negatives)
        data.loader.set_epoch(epoch, hard_negatives=n_hard)
        self.net.train()
        sums = {"loss": 0.0, "easy": 0.0, "hard": 0.0, "n": 0, "n_hard": 0, "queries": 0}
        pending = StepLosses()
        t0 = time.perf_counter()
        bar = tqdm(total=data.steps_per_epoch, initial=self.skip,
                   desc=f"epoch {epoch}/{t.epochs}", disable=True if not self.ddp.main else None,
                   leave=False)
        with data.loader:
            for i, mb in enumerate(data.loader):
                if i >= data.steps_per_epoch:
                    break
                if i < self.skip:
                    continue
                mb = mb.to(self.device, non_blocking=True)
                loss, l_easy, l_hard = batch_loss(self.net, mb, loss=t.loss, margin=t.margin,
                                                  temperature=self.scale.temperature(),
                                                  sampling=data.sampling)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.scale.all_reduce(self.ddp.world)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                # No read from the device here: shapes and Python numbers only.
                sums["queries"] += len(mb.query)
                pending.add(self.step, loss, l_easy, l_hard)
                if writer is not None:
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                bar.update(1)
                if len(pending) >= t.log_every:
                    _flush(pending, sums, writer, bar)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save(epoch, i + 1)
        _flush(pending, sums, writer, bar)
        bar.close()
        seconds = time.perf_counter() - t0
        self.skip = 0
        return {"epoch": epoch, "steps": self.step, "hard_negatives": n_hard,
                "loss": sums["loss"] / max(1, sums["n"]),
                "loss_easy": sums["easy"] / max(1, sums["n"]),
                "loss_hard": sums["hard"] / sums["n_hard"] if sums["n_hard"] else None,
                "temperature": self.scale.value(),
                "queries_per_second": sums["queries"] / seconds if seconds else 0.0,
                "loader_wait_seconds": data.loader.wait_seconds, "seconds": seconds}


def _flush(pending: StepLosses, sums: dict, writer, bar) -> None:
    """Read the pending steps' losses (one device sync) into the epoch's sums, TensorBoard and
    the progress bar: every ``train.log_every`` steps and at the epoch end."""
    values = pending.read()
    for at, total, easy, hard in values:
        sums["loss"] += total
        sums["easy"] += easy
        sums["n"] += 1
        if hard is not None:
            sums["hard"] += hard
            sums["n_hard"] += 1
        if writer is not None:
            writer.add_scalar("train/loss", total, at)
            writer.add_scalar("train/loss_easy", easy, at)
            if hard is not None:
                writer.add_scalar("train/loss_hard", hard, at)
    if values:
        bar.set_postfix(loss=f"{values[-1][1]:.4f}")


def _publish(stage: Stage, run: _Training, data: _TrainingData, new: np.ndarray, val,
             params: dict) -> TrainResult:
    """Check that the new items' rows stayed untrained, choose the item bias's scale on
    validation, publish the model with its spec and history."""
    t, model = run.t, run.model
    unseen_id_rows(model, new, check=True)
    bias = _choose_bias_scale(model, val, t.bias_scales)
    with stage.publish() as out:
        torch.save(model.state_dict(), out.path / "model.pt")
        out.manifest.update({
            "counts": {"epochs": t.epochs, "steps": run.step, "parameters":
                       sum(p.numel() for p in model.parameters())},
            "history": run.history,
            "tensorboard": tensorboard_dir(stage.fingerprint),
            "bias_scale": bias,
            "model": {"feature_dim": data.store.dim, "num_items": data.store.num_items,
                      "num_neighbors": data.num_neighbors, **params["model"]},
        })
    return TrainResult(out.version, run.history, bias_scale=bias)


@torch.no_grad()
def _choose_bias_scale(model, val, scales) -> dict | None:
    """Scale the learned query shift (``model.item_bias``) by the best of ``scales`` on validation.

    The shift carries the popularity prior of the training pairs. Whether the
    held-out rows follow it depends on the graph: on hub-dominated graphs
    (dependencies, baskets) it is most of the answer, while leave-last-out on
    ratings asks for items that were rarer in training. So the prior's weight
    is chosen, like any setting, on the validation rows, and published in
    place (serving then uses it as it is). ``None`` without a shift.
    """
    if model.query_shift is None or val is None:
        return None
    model.eval()
    by_scale = val.mrr_by_bias_scale(model, scales)
    chosen = max(scales, key=lambda s: (by_scale[s], -s)) if by_scale else 1.0
    model.query_shift.mul_(float(chosen))
    log.info("item bias: scale %s chosen on validation (MRR by scale: %s)", chosen,
             ", ".join(f"{s}: {m:.4f}" for s, m in by_scale.items()))
    return {"chosen": float(chosen), "val_mrr": {str(s): m for s, m in by_scale.items()}}


def tensorboard_dir(fp: str) -> str:
    """Where a training run's TensorBoard events go, relative to the run directory
    (recorded in the model's manifest as ``tensorboard``)."""
    return str(Path("_tensorboard") / fp[:16])


def _tensorboard(run_dir: str, fp: str):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(Path(run_dir) / tensorboard_dir(fp)))


def _log_epoch(writer, record: dict, step: int, k: int, popularity_hit_rate: float) -> None:
    """An epoch's record (with its validation) to the log file and TensorBoard."""
    log.info("epoch %d: loss %.4f (easy %.4f, hard %s), val hit-rate@%d %.4f (popularity %.4f), "
             "%.0f queries/s, loader wait %.1fs", record["epoch"], record["loss"],
             record["loss_easy"],
             f"{record['loss_hard']:.4f}" if record["loss_hard"] is not None else "-",
             k, record[f"val_hit_rate@{k}"], popularity_hit_rate,
             record["queries_per_second"], record["loader_wait_seconds"])
    if writer is None:
        return
    writer.add_scalar(f"val/hit_rate@{k}", record[f"val_hit_rate@{k}"], step)
    if record["val_loss"] is not None:             # None: no validation minibatches
        writer.add_scalar("val/loss", record["val_loss"], step)
    writer.add_scalar("perf/queries_per_second", record["queries_per_second"], step)
    writer.add_scalar("perf/loader_wait_seconds", record["loader_wait_seconds"], step)


def load_model(run_dir: str, version: str | None = None, device: str = "cpu"):
    """The published model and its manifest, ready for inference."""
    manifest = ModelManifest.read(run_dir, version)
    spec = manifest.spec
    model = build_model(SimpleNamespace(**spec), spec["feature_dim"], spec["num_items"])
    path = versioned.resolve(run_dir, STAGE, version) / "model.pt"
    try:
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    except Exception as e:        # truncated or overwritten: torch raises several kinds
        raise versioned.CorruptFile(f"{path} cannot be read as the model its manifest describes "
                                    f"({type(e).__name__}: {str(e)[:200]}); retrain it "
                                    f"(jobs/train.py force=true)") from None
    return model.eval(), manifest
