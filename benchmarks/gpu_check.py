"""The producer-consumer loader with a GPU as the consumer (run by ``gpu_check.sh``).

Ingests and samples the bundled MovieLens-100K once into a temporary run
directory, then trains one epoch with ``train.prefetch=0`` (read, gather and
compute in turn) and with ``train.prefetch=4`` (producer threads load while
the GPU computes), ``--rounds`` times each, keeping each mode's best round.
While each run trains, ``nvidia-smi`` (or ``torch.cuda.utilization`` where
it is missing) is sampled every 100 ms; the busy share is the mean
utilisation over the epoch's training loop.

Last lines: ``gpu_busy_share`` (prefetching run), ``queries_per_second``
(prefetching run), ``prefetch_speedup`` and ``overlap_efficiency =
(t_sync - t_prefetch) / t_load_sync``, the share of the synchronous run's
loading time the producers hide (goal >= 0.9).

    bash benchmarks/gpu_check.sh
    .venv/bin/python benchmarks/gpu_check.py --device cpu --rounds 1   # a dry run of the script
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import CONF_DIR  # noqa: E402
from pipeline.ingest import run_ingest  # noqa: E402
from pipeline.sampling import run_sample  # noqa: E402
from pipeline.spark import build_spark  # noqa: E402
from pipeline.train.trainer import run_train  # noqa: E402


class Utilisation:
    """Samples the GPU's utilisation (percent busy) in a background thread."""

    def __init__(self, device: str, every: float = 0.1):
        self.samples: list[float] = []
        self.every, self.on = every, device == "cuda"
        self.smi = shutil.which("nvidia-smi")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if self.smi:
            out = subprocess.run([self.smi, "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i",
                                  str(torch.cuda.current_device())],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            return float(out.splitlines()[0]) if out else None
        return float(torch.cuda.utilization())

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = self._read()
            if value is not None:
                self.samples.append(value / 100.0)

    def __enter__(self) -> "Utilisation":
        if self.on:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.on:
            self._thread.join()

    @property
    def share(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def config(run_dir: str, device: str, prefetch: int, extra: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[
            f"run_dir={run_dir}", "train.epochs=1", f"train.device={device}",
            f"train.prefetch={prefetch}", "train.checkpoint_every=0", "force=true", *extra])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each mode; the best is kept")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Hydra overrides for every run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="    %(message)s")
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        cfg = config(run_dir, args.device, 0, args.set)
        spark = build_spark("local[2]", app_name="gpu-check")
        run_ingest(spark, cfg)
        run_sample(spark, cfg)
        spark.stop()
        best: dict[int, tuple[float, dict, float]] = {}
        for r in range(args.rounds):
            for prefetch in (0, 4):
                with Utilisation(args.device) as util:
                    t0 = time.perf_counter()
                    rec = run_train(config(run_dir, args.device, prefetch, args.set)).history[-1]
                    wall = time.perf_counter() - t0
                qps = rec["queries_per_second"]
                print(f"round {r + 1}, prefetch={prefetch}: {qps:9,.0f} queries/s, epoch "
                      f"{rec['seconds']:.2f} s (run {wall:.1f} s with validation), loader wait "
                      f"{rec['loader_wait_seconds']:.2f} s, GPU busy {util.share:.0%}")
                if prefetch not in best or qps > best[prefetch][0]:
                    best[prefetch] = (qps, rec, util.share)
    (q0, sync, _), (q4, pre, busy) = best[0], best[4]
    t_sync, t_load_sync, t_prefetch = sync["seconds"], sync["loader_wait_seconds"], pre["seconds"]
    print(f"gpu_busy_share={busy:.2f}")
    print(f"queries_per_second={q4:.0f}")
    print(f"prefetch_speedup={q4 / q0:.2f}")
    print(f"overlap_efficiency={(t_sync - t_prefetch) / max(t_load_sync, 1e-9):.2f}")


if __name__ == "__main__":
    main()
