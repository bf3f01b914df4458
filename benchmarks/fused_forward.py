"""Frozen forward with BatchNorm folding (accel.fold) against the plain frozen forward, and their outputs.

Every freezable layer frozen (``freeze_layer``), the model in training mode with autograd on (a training step's
forward), channels-last by default. Variants, timed alternating round robin (order reversed every other round),
medians, as ratios to ``plain`` measured in the same rounds, at each thread count given:

- ``plain``: frozen layers as ``FreezeOut(..., fuse=False)`` leaves them;
- ``fold``: BatchNorms folded (``fold_layer``), DenseNet's frozen fast path off (DenseNet only);
- ``fused``: what ``FreezeOut(..., fuse=True)`` does: folded, plus DenseNet's fast path (rectified features handed
  on, transitions pool first: ``experiment/models/densenet.py``);
- ``compiled`` (``--compile``): ``fused`` with ``compile_blocks`` (inductor) on top.

``frozen forward`` times the freezable layers alone; ``step`` a whole training step of the model (head trains).
``--profile``: where each variant's frozen forward spends its time (``torch.profiler``, self CPU time by kind of
op): what is left to cut once the convolutions, which inference needs as much, are all that remains.
BatchNorm statistics and affine parameters are randomised first, so that no fold is close to the identity; the
max relative difference of the frozen prefix's output (rectified, as every consumer sees it) and of the logits
is reported per variant.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_forward.py --threads 1 2                      # DenseNet-BC-76
    PYTHONPATH=. .venv/bin/python benchmarks/fused_forward.py --model resnet --depth 56 --threads 1 2
    PYTHONPATH=. .venv/bin/python benchmarks/fused_forward.py --depth 10 --batch 8 --rounds 3  # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from freezeout import compile_blocks, freeze_layer, param_groups
from freezeout.accel.fold import fold_layer
from freezeout.analysis.timing import sync
from freezeout.experiment.models import build_example, densenet
from freezeout.experiment.runfiles import atomic_json


def frozen_copy(model: nn.Module, fuse: bool) -> tuple[nn.Module, list[nn.Module], torch.optim.Optimizer]:
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(param_groups(m, m.layers), lr=0.01, momentum=0.9)
    for i, layer in enumerate(m.layers):
        freeze_layer(layer, opt.param_groups[i], opt)
        if fuse:
            fold_layer(layer)
    return m, m.layers, opt


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5)):
                    t.copy_(torch.empty(t.shape).uniform_(lo, hi, generator=g))
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-0.5, 0.5, generator=g))


OP_KINDS = ("conv", "cat", "relu", "batch_norm", "pool", "add")


def op_shares(fn, iters: int = 3) -> dict[str, float]:
    """Fraction of ``fn``'s self CPU time (profiled over ``iters`` calls) per kind of op in ``OP_KINDS``, the rest
    as ``other`` (allocation, copies, Python-side work the profiler attributes to ops)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    totals = dict.fromkeys((*OP_KINDS, "other"), 0.0)
    for event in prof.key_averages():
        kind = next((k for k in OP_KINDS if k in event.key), "other")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: v / whole for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="densenet-bc", choices=("densenet-bc", "resnet"))
    ap.add_argument("--depth", type=int, default=None, help="default: the model's (76, 20)")
    ap.add_argument("--width", type=int, default=None, help="growth k / base width; default: the model's")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--compile", action="store_true", help="also time compile_blocks (inductor) on the fused copy")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--profile", action="store_true", help="also the frozen forward's time by kind of op (CPU)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/fused_forward_MODEL.json")
    args = ap.parse_args()
    model, x = build_example(args.model, args.depth, args.width, 10, (3, 32, 32), args.batch, args.channels_last)
    randomise_bn(model)
    model, x = model.to(args.device), x.to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(1)).to(args.device)
    dense = args.model == "densenet-bc"
    no_fast = mock.patch.object(densenet, "_fast", lambda layer, x: False)
    variants: dict[str, tuple] = {"plain": (*frozen_copy(model, False), contextlib.nullcontext)}
    if dense:
        variants["fold"] = (*frozen_copy(model, True), lambda: no_fast)
    variants["fused"] = (*frozen_copy(model, True), contextlib.nullcontext)
    if args.compile:
        variants["compiled"] = (*frozen_copy(model, True), contextlib.nullcontext)
        compile_blocks(variants["compiled"][1])

    def prefix(name: str) -> torch.Tensor:
        m, layers, _, ctx = variants[name]
        m.train()
        with ctx():
            h = x
            for layer in layers:
                h = layer(h)
        return h

    def step(name: str) -> torch.Tensor:
        m, _, opt, ctx = variants[name]
        m.train()
        with ctx():
            opt.zero_grad(set_to_none=True)
            out = m(x)
            F.cross_entropy(out, y).backward()
        return out.detach()

    # outputs before any step moves the head: the prefix rectified (what every DenseNet consumer sees), the logits
    ref_prefix, ref_logits = F.relu(prefix("plain")), step("plain")
    diffs = {}
    for name in variants:
        p, lg = F.relu(prefix(name)), step(name)
        diffs[name] = {
            "prefix_max_rel": ((p - ref_prefix).abs().max() / ref_prefix.abs().max()).item(),
            "logits_max_rel": ((lg - ref_logits).abs().max() / ref_logits.abs().max()).item(),
        }
    samples = {(t, kind, name): [] for t in args.threads for kind in ("forward", "step") for name in variants}
    for r in range(-2, args.rounds):  # two untimed rounds: allocator, kernels, compiled graphs
        for t in args.threads:
            torch.set_num_threads(t)
            prefix("plain")  # untimed: the first op after a change of thread count pays for the new thread pool
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for kind, fn in (("forward", prefix), ("step", step)):
                for name in order:
                    sync(args.device)
                    start = time.perf_counter()
                    fn(name)
                    sync(args.device)
                    if r >= 0:
                        samples[(t, kind, name)].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    result = {
        "model": args.model,
        "depth": model.depth,
        "batch": args.batch,
        "channels_last": args.channels_last,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "device": args.device,
        "diffs": diffs,
        "timings": [],
    }
    print(f"{args.model}-{model.depth}, batch {args.batch}, {'channels-last' if args.channels_last else 'NCHW'}")
    for name, d in diffs.items():
        print(f"  {name:9s} max rel diff: prefix {d['prefix_max_rel']:.2e}, logits {d['logits_max_rel']:.2e}")
    for (t, kind, name), v in samples.items():
        med, base = statistics.median(v), statistics.median(samples[(t, kind, "plain")])
        result["timings"].append(
            {"threads": t, "kind": kind, "variant": name, "median_s": med, "ratio": med / base, "samples": v}
        )
        print(f"  {t} thread(s) {kind:8s} {name:9s} {1e3 * med:8.1f} ms  {med / base:.3f}x plain")
    if args.profile:
        result["profile"] = {}
        for t in args.threads:
            torch.set_num_threads(t)
            for name in variants:
                shares = op_shares(functools.partial(prefix, name))
                result["profile"][f"{t}/{name}"] = shares
                print(f"  {t} thread(s) {name:9s} " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
    out = args.out or Path(f"benchmarks/results/fused_forward_{args.model}.json")
    atomic_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
