"""Seconds per epoch of the trainer's hot path (DenseNet-BC on CIFAR-shaped data), extrapolated from a few steps.

Run: .venv/bin/python benchmarks/epoch_time.py [--depth 76 --growth 12 --batch 50 --steps 20 --threads 1]
Times ``--steps`` optimizer steps of the real training loop (on-device augmentation, forward, backward,
SGD, FreezeOut at t0 = 1, so nothing is frozen: the baseline's cost) on random 32 x 32 uint8 images, and
reports the median step time x the steps of one CIFAR epoch (50,000 / batch). An extrapolation, not a
measured epoch.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from freezeout.checks import resolve_device
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.data import Dataset
from freezeout.experiment.engine import Run
from freezeout.experiment.runfiles import atomic_json


class _StepClock:
    """Each step's end: the training loop calls ``update()`` right after each step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, [time.perf_counter()]

    def update(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=76)
    ap.add_argument("--growth", type=int, default=12)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--train-size", type=int, default=50_000, help="images per epoch to extrapolate to")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/epoch_time.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = (args.steps + args.warmup) * args.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    data = Dataset("random-cifar", x, y, x[:10], y[:10], num_classes=10, pad=4, flip=True)
    config = TrainConfig(depth=args.depth, growth=args.growth, epochs=1, batch_size=args.batch, t0=1.0)
    device = resolve_device(args.device)
    run = Run(config, data, device)
    clock = _StepClock(device)
    run.train_epoch(torch.zeros((), device=device), clock.update)
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][args.warmup :]
    step_s = statistics.median(steps)
    per_epoch = math.ceil(args.train_size / args.batch)
    result = {
        "model": f"densenet-bc-{args.depth} k={args.growth}",
        "batch": args.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps_timed": len(steps),
        "median_step_s": step_s,
        "min_step_s": min(steps),
        "max_step_s": max(steps),
        "steps_per_epoch": per_epoch,
        "extrapolated_epoch_s": step_s * per_epoch,
    }
    print(
        f"{result['model']} batch {args.batch} on {device} ({result['threads']} threads): median step "
        f"{step_s:.3f} s (min {min(steps):.3f}, max {max(steps):.3f}, {len(steps)} steps) -> "
        f"~{step_s * per_epoch:.0f} s per {args.train_size}-image epoch ({per_epoch} steps; extrapolated)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result)


if __name__ == "__main__":
    main()
