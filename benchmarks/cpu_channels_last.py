"""Channels-last vs the plain (NCHW) layout for DenseNet-BC training steps, A/B alternated in one process.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/cpu_channels_last.py            # BC-76, CIFAR shape
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/cpu_channels_last.py --depth 40 --size 8 --channels 1 \
        --batch 50 --out benchmarks/results/cpu_channels_last_digits.json                     # the demo's shape

Two copies of one model, one in each layout, take turns (A B B A ...) at each frozen-prefix length k; the
result is the median step time per layout and k, their ratio, and the saving T(k)/T(0) in each layout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from freezeout.analysis.timing import set_frozen_prefix
from freezeout.analysis.workload import copy_model, make_optimizer, train_step
from freezeout.experiment.models import DenseNetBC
from freezeout.experiment.runfiles import atomic_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=76)
    ap.add_argument("--growth", type=int, default=12)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--size", type=int, default=32, help="input height = width")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8, help="timed A/B rounds per k")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_channels_last.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = DenseNetBC(args.depth, args.growth, in_channels=args.channels)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    runs = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        clone, layers = copy_model(model, model.layers)
        clone.to(memory_format=fmt)
        runs[name] = (clone, layers, make_optimizer(clone, layers), x.contiguous(memory_format=fmt))
    n = len(model.layers)
    ks = [0, n // 4, n // 2, n]
    times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in ks} for name in runs}
    for r in range(-1, args.rounds):  # round -1 warms both copies up untimed
        for k in ks:
            order = list(runs) if r % 2 == 0 else list(reversed(runs))  # A B, then B A: drift hits both alike
            for name in order:
                clone, layers, opt, xb = runs[name]
                set_frozen_prefix(clone, layers, k, fuse=False)  # as measured for BENCHMARKS.md, before folding
                train_step(clone, opt, xb, y, F.cross_entropy)  # settle after the change of k
                start = time.perf_counter()
                train_step(clone, opt, xb, y, F.cross_entropy)
                if r >= 0:
                    times[name][k].append(time.perf_counter() - start)
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    result = {
        "model": f"densenet-bc-{args.depth} k={args.growth}",
        "input_shape": list(x.shape),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "median_step_s": {name: {str(k): v for k, v in m.items()} for name, m in med.items()},
        "channels_last_over_nchw": {str(k): med["channels_last"][k] / med["nchw"][k] for k in ks},
        "relative_step_time": {name: {str(k): m[k] / m[0] for k in ks} for name, m in med.items()},
    }
    rel = result["relative_step_time"]
    for k in ks:
        print(
            f"k={k:3d}  nchw {1e3 * med['nchw'][k]:7.1f} ms  channels_last {1e3 * med['channels_last'][k]:7.1f} ms"
            f"  ratio {result['channels_last_over_nchw'][str(k)]:.3f}  T(k)/T(0): "
            f"{rel['nchw'][str(k)]:.3f} / {rel['channels_last'][str(k)]:.3f}"
        )
    atomic_json(args.out, result)


if __name__ == "__main__":
    main()
