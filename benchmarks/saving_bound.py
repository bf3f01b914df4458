"""How far can FreezeOut's saving go on this hardware? Three step-time curves of DenseNet-BC, side by side.

- **freezeout**: the first ``k`` layers frozen as ``FreezeOut(fuse=False)`` freezes them (no backward, eval-mode
  forward);
- **fused**: the same as ``FreezeOut`` does by default: frozen layers' BatchNorms folded into their convs, and
  DenseNet-BC's frozen fast path (``fuse=True``, ``experiment/models/densenet.py``);
- **split**: the same, plus no input gradient for frozen channels inside a dense block (``Split``, a lever
  beyond the paper: in a partly frozen block every trainable layer reads the concatenation of frozen and
  trainable features, and autograd forms the ReLU and BatchNorm input gradient of all of it, then drops
  the frozen part; ``Split`` runs ReLU -> BN -> 1x1 conv on the two channel groups apart, the same maths);
- **bound**: the frozen prefix costs *nothing*: its output is computed once and fed to the trainable rest.
  No implementation that still runs the frozen layers on each new batch (which augmentation requires)
  can beat it, so its saving bounds every way of making frozen layers cheaper.

The models share weights; their steps alternate round-robin per ``k`` (medians), and each curve is integrated
over the four strategies' schedules like the calibrated estimate.

    PYTHONPATH=. .venv/bin/python benchmarks/saving_bound.py                           # ~13 min on this CPU
    PYTHONPATH=. .venv/bin/python benchmarks/saving_bound.py --curves freezeout fused  # folding alone, ~6 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from freezeout import freeze_times
from freezeout.analysis.cost import integrate_step_times, interpolate_step_times
from freezeout.analysis.timing import default_ks, set_frozen_prefix
from freezeout.analysis.workload import make_optimizer, train_step
from freezeout.experiment.models import DenseNetBC
from freezeout.experiment.runfiles import atomic_json

STRATEGIES = [(s, sc, t0) for s in ("linear", "cubic") for sc in (False, True) for t0 in (0.5, 0.8)]


def split_unit(relu, bn, conv, feats: list[torch.Tensor]) -> torch.Tensor:
    """ReLU -> BN -> 1x1 conv over the concatenated ``feats``, the frozen (no-grad) prefix apart."""
    i = 0
    while i < len(feats) and not feats[i].requires_grad:
        i += 1
    if i in (0, len(feats)) or not torch.is_grad_enabled():
        return conv(bn(relu(torch.cat(feats, 1))))
    xf, xt = torch.cat(feats[:i], 1), torch.cat(feats[i:], 1)
    out = 0
    for x, sl in ((xf, slice(0, xf.shape[1])), (xt, slice(xf.shape[1], None))):
        a = F.batch_norm(
            relu(x),
            bn.running_mean[sl],
            bn.running_var[sl],
            bn.weight[sl],
            bn.bias[sl],
            bn.training,
            bn.momentum,
            bn.eps,
        )
        out = out + F.conv2d(a, conv.weight[:, sl])
    return out


class Split(DenseNetBC):
    """The same modules and weights as ``DenseNetBC``; only the forward differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b, block in enumerate(self.blocks):
            feats = [x]
            for layer in block:
                body = layer.body
                feats.append(body[5](body[4](body[3](split_unit(body[0], body[1], body[2], feats)))))
            if b < len(self.transitions):
                t = self.transitions[b]
                x = t[3](split_unit(t[0], t[1], t[2], feats))
            else:
                x = torch.cat(feats, 1)
        return self.fc(self.head(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=76)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--points", type=int, default=14, help="k values measured (0 and n included)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/saving_bound.json"))
    curves = ("freezeout", "fused", "split", "bound")
    ap.add_argument("--curves", nargs="+", choices=curves, default=list(curves), help="(freezeout is always in)")
    args = ap.parse_args()
    names = ["freezeout", *(c for c in curves if c in args.curves and c != "freezeout")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = DenseNetBC(args.depth, 12)
    split = Split(args.depth, 12)
    split.load_state_dict(plain.state_dict())
    fused = DenseNetBC(args.depth, 12)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        plain.to(memory_format=torch.channels_last)
        split.to(memory_format=torch.channels_last)
        fused.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    n = len(plain.layers)
    ks = default_ks(n, args.points)
    check = _same_maths(plain, split, x, k=min(5, n - 1))
    opts = {"freezeout": make_optimizer(plain, plain.layers), "split": make_optimizer(split, split.layers)}
    opts["fused"] = make_optimizer(fused, fused.layers)
    samples: dict[str, dict[int, list[float]]] = {name: {k: [] for k in ks} for name in names}

    def timed(step) -> float:
        step()  # settle: the first step after a change of k pays one-off costs
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    for r in range(-1, args.repeats):  # round -1 warms up every k untimed
        for k in ks if r % 2 == 0 else reversed(ks):
            # fuse=False but for "fused": the other curves are those of BENCHMARKS.md's "The ceiling", before folding
            set_frozen_prefix(plain, plain.layers, k, fuse=False)
            set_frozen_prefix(split, split.layers, k, fuse=False)
            set_frozen_prefix(fused, fused.layers, k, fuse=True)
            cached = x
            with torch.no_grad():  # the bound's prefix output, computed once (frozen: eval mode, no grad)
                for layer in plain.layers[:k] if "bound" in names else ():
                    cached = layer(cached)
            rest = nn.Sequential(*plain.layers[k:], plain.head, plain.fc)  # the forward of layers k.. and head
            steps = {
                "freezeout": lambda: train_step(plain, opts["freezeout"], x, y, F.cross_entropy),
                "fused": lambda: train_step(fused, opts["fused"], x, y, F.cross_entropy),
                "split": lambda: train_step(split, opts["split"], x, y, F.cross_entropy),
                "bound": lambda rest=rest, cached=cached: train_step(
                    rest, opts["freezeout"], cached, y, F.cross_entropy
                ),
            }
            for name in names if (r + k) % 2 == 0 else reversed(names):  # alternate which comes first
                t = timed(steps[name])
                if r >= 0:
                    samples[name][k].append(t)
        print(f"round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    result = {"depth": args.depth, "batch": args.batch, "threads": args.threads, "channels_last": args.channels_last}
    result["ks"] = ks
    result["split_vs_plain_max_abs_diff"] = check
    base = statistics.median(samples["freezeout"][0])  # every curve relative to the same T(0)
    for name, by_k in samples.items():
        measured = {k: statistics.median(v) for k, v in by_k.items()}
        measured[0] = base
        curve = interpolate_step_times(measured, n)
        savings = {
            f"{s}-{'scaled' if sc else 'unscaled'}-{t0:g}": integrate_step_times(curve, freeze_times(n, t0, s))[
                "saving"
            ]
            for s, sc, t0 in STRATEGIES
        }
        result[name] = {"relative_step_times": {k: measured[k] / base for k in ks}, "savings": savings}
        print(
            f"{name:10s} T(n)/T(0) {measured[n] / base:.2f}   " + "  ".join(f"{k} {v:.1%}" for k, v in savings.items())
        )
    atomic_json(args.out, result)
    print(f"wrote {args.out}")


def _same_maths(plain: nn.Module, split: nn.Module, x: torch.Tensor, k: int) -> dict[str, float]:
    """``Split`` must compute what the plain model does, outputs and gradients, up to float rounding."""
    got = {}
    for name, m in (("plain", plain), ("split", split)):
        set_frozen_prefix(m, m.layers, k, fuse=False)
        m.zero_grad(set_to_none=True)
        out = m(x)
        out.square().mean().backward()
        got[name] = (out.detach(), [p.grad for p in m.parameters() if p.grad is not None])
    (a, ga), (b, gb) = got["plain"], got["split"]
    assert len(ga) == len(gb), "split and plain compute gradients for different parameters"
    return {"output": (a - b).abs().max().item(), "grad": max((u - v).abs().max().item() for u, v in zip(ga, gb))}


if __name__ == "__main__":
    main()
