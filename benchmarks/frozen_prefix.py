"""Step time and saved-for-backward bytes of a small conv net with its first k layers frozen.

Run: .venv/bin/python benchmarks/frozen_prefix.py [--out benchmarks/results/frozen_prefix.json]
Measures every k in one process, alternating k's round-robin, and reports medians relative to k = 0.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import freezeout
from freezeout.experiment.runfiles import atomic_json


def conv_net(width: int = 32, depth: int = 8) -> tuple[nn.Module, list[nn.Module]]:
    blocks = [nn.Conv2d(3, width, 3, padding=1)]
    blocks += [
        nn.Sequential(nn.ReLU(), nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, padding=1)) for _ in range(depth)
    ]
    head = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    model = nn.Sequential(*blocks, head)
    return model, blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/frozen_prefix.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    models = {}
    _, n_layers = conv_net()
    n = len(n_layers)
    for k in range(n + 1):
        model, layers = conv_net()
        opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.1, momentum=0.9)
        for i in range(k):
            freezeout.freeze_layer(layers[i], opt.param_groups[i], opt)
        models[k] = (model, opt)
    times: dict[int, list[float]] = {k: [] for k in models}
    for r in range(args.rounds + 2):
        for k, (model, opt) in models.items():
            model.train()
            t = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if r >= 2:  # warm-up rounds
                times[k].append(time.perf_counter() - t)
    rows = []
    for k, (model, _) in models.items():
        _, saved = freezeout.saved_tensor_bytes(lambda m=model: m(x))
        rows.append({"frozen": k, "median_step_s": statistics.median(times[k]), "saved_bytes": saved})
    base = rows[0]
    print(f"{'frozen':>6} {'step ms':>8} {'vs k=0':>7} {'saved MiB':>9} {'vs k=0':>7}")
    for row in rows:
        row["step_ratio"] = row["median_step_s"] / base["median_step_s"]
        row["saved_ratio"] = row["saved_bytes"] / base["saved_bytes"]
        print(
            f"{row['frozen']:>6} {row['median_step_s'] * 1e3:>8.1f} {row['step_ratio']:>7.2f}"
            f" {row['saved_bytes'] / 2**20:>9.2f} {row['saved_ratio']:>7.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, {"batch": args.batch, "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
