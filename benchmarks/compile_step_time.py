"""Training step time of a small DenseNet-BC: eager vs. ``compile_blocks`` (inductor), at several frozen counts.

Run: .venv/bin/python benchmarks/compile_step_time.py [--depth 22 --growth 12 --batch 32]
For each frozen count k, an eager and a per-block compiled copy of the same model (same weights) take
turns, round-robin; medians after warm-up (the compiled copies compile during warm-up). Also reports the
compile time of each compiled copy's warm-up and whether dynamo ever hit its recompile limit.
Writes benchmarks/results/compile_step_time.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

import freezeout
from freezeout.experiment.models import DenseNetBC


def build(depth: int, growth: int, frozen: int, compiled: bool, device: str = "cpu"):
    torch.manual_seed(0)
    model = DenseNetBC(depth=depth, growth=growth).to(device)
    layers = model.layers
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.1, momentum=0.9)
    for i in range(frozen):
        freezeout.freeze_layer(layers[i], opt.param_groups[i], opt)
    if compiled:
        freezeout.compile_blocks(layers)
    return model, opt


def step(model, opt, x, y) -> float:
    model.train()
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if x.is_cuda:  # queued kernels count too
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=22)
    ap.add_argument("--growth", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compile_step_time.json"))
    args = ap.parse_args()
    torch._dynamo.config.recompile_limit = 8  # the default, stated: the point is to stay under it
    n = len(DenseNetBC(depth=args.depth, growth=args.growth).layers)
    ks = sorted({0, n // 2, n - 1})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    x, y = x.to(args.device), y.to(args.device)
    runs = {(k, c): build(args.depth, args.growth, k, c, args.device) for k in ks for c in (False, True)}
    compile_s = {}
    for key, (model, opt) in runs.items():  # warm-up: compiles the compiled copies
        compile_s[key] = sum(step(model, opt, x, y) for _ in range(2))
    times: dict[tuple[int, bool], list[float]] = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, (model, opt) in runs.items():
            times[key].append(step(model, opt, x, y))
    rows = []
    print(f"{'frozen':>6} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15} {'warm-up s':>10}")
    for k in ks:
        eager, comp = statistics.median(times[k, False]), statistics.median(times[k, True])
        rows.append(
            {
                "frozen": k,
                "eager_step_s": eager,
                "compiled_step_s": comp,
                "ratio": comp / eager,
                "compiled_warmup_s": compile_s[k, True],
            }
        )
        print(f"{k:>6} {eager * 1e3:>9.1f} {comp * 1e3:>12.1f} {comp / eager:>15.2f} {compile_s[k, True]:>10.1f}")
    limit_hit = any("recompile limit" in r.lower() for r in counters["unimplemented"])
    print(f"layers: {n}, threads: {torch.get_num_threads()}, recompile limit hit: {limit_hit}")
    summary = {**vars(args), "out": str(args.out), "layers": n, "threads": torch.get_num_threads()}
    summary.update(rows=rows, recompile_limit_hit=limit_hit, torch=torch.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
