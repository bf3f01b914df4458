"""What a frozen layer costs against a copy frozen by hand: the all-frozen training step, FreezeOut's against the same
model with the same layers frozen by ``requires_grad_(False)`` + ``eval()``.

Two models: a nanoGPT-style transformer (6 blocks of 64, context 32; its embeddings the first layer) and the CIFAR
ResNet-20 of ``freezeout.experiment.models`` (9 BatchNorm blocks), each at
batch 1 (where per-call overhead on the CPU is the whole story, as it is on a GPU that waits for its kernels) and at
a realistic batch, with ``fuse`` off and on. A step: ``zero_grad``, forward, loss, backward, ``optimizer.step()``,
both models with the same optimizer layout (FreezeOut's per-layer groups). The two rigs alternate in rounds, each
round ``--reps`` steps of one then the other (the order flipping every round), one thread, timed by that thread's CPU
clock (``time.thread_time``: what other processes do on a shared machine does not count; ``--clock wall`` for the
wall clock); the ratio per round, the median over ``--rounds``. ``sched.step()`` is timed on its own (microseconds
per call). Target: every ratio <= 1.02.

Run: PYTHONPATH=. .venv/bin/python benchmarks/frozen_overhead.py [--out benchmarks/results/frozen_overhead.json]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import freezeout
from freezeout.experiment.models import ResNet
from freezeout.experiment.runfiles import atomic_json


class Block(nn.Module):
    """nanoGPT's block: pre-norm causal self-attention and a GELU MLP, dropout in both."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        drop = 0.1 if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop).transpose(1, 2).reshape(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 64, depth: int = 6, context: int = 32) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.h = nn.ModuleList(Block(dim) for _ in range(depth))
        self.ln_f, self.lm_head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def workload(kind: str, batch: int) -> tuple[nn.Module, list[Any], Callable[[nn.Module], torch.Tensor]]:
    torch.manual_seed(0)
    if kind == "transformer":
        model = GPT()
        ids = torch.randint(0, 128, (batch, 32))
        return model, [[model.wte, model.wpe], *model.h], lambda m: F.cross_entropy(m(ids).flatten(0, 1), ids.flatten())
    model = ResNet(20, 16)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return model, model.layers, lambda m: F.cross_entropy(m(x), y)


def _members(layer: Any) -> list[Any]:
    return list(layer) if isinstance(layer, (list, tuple)) else [layer]


def rig(kind: str, batch: int, how: str, fuse: bool) -> tuple[Callable[[], None], Any]:
    """One training step of the all-frozen model: frozen ``by hand`` or by ``freezeout``."""
    model, layers, loss_of = workload(kind, batch)
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.01, momentum=0.9)
    sched = None
    model.train()
    if how == "by hand":
        for member in (m for layer in layers for m in _members(layer)):
            member.requires_grad_(False)
            if isinstance(member, nn.Module):
                member.eval()
    else:
        sched = freezeout.FreezeOut(opt, layers, 100, t0=0.5, fuse=fuse)
        sched.step_to(99)
        assert sched.num_frozen == len(layers)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(model).backward()
        opt.step()

    for _ in range(3):  # warm: first calls prove folds, allocators settle
        step()
    return step, sched


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def ratio(kind: str, batch: int, fuse: bool, rounds: int, reps: int, clock: Callable[[], float]) -> dict[str, Any]:
    """The median over rounds of (FreezeOut's steps' seconds / the hand-frozen copy's), alternating."""
    hand, _ = rig(kind, batch, "by hand", fuse)
    ours, _ = rig(kind, batch, "freezeout", fuse)
    ratios, seconds = [], {"by hand": [], "freezeout": []}
    for r in range(rounds):
        pair = [("by hand", hand), ("freezeout", ours)]
        took = {}
        for name, step in pair if r % 2 == 0 else pair[::-1]:
            start = clock()
            for _ in range(reps):
                step()
            took[name] = clock() - start
            seconds[name].append(took[name] / reps)
        ratios.append(took["freezeout"] / took["by hand"])
    return {
        "model": kind,
        "batch": batch,
        "fuse": fuse,
        "ratio": statistics.median(ratios),
        "ratio_quartiles": statistics.quantiles(ratios, n=4),
        "step_ms_by_hand": 1e3 * statistics.median(seconds["by hand"]),
        "step_ms_freezeout": 1e3 * statistics.median(seconds["freezeout"]),
    }


def sched_step_us(clock: Callable[[], float], calls: int = 2000) -> float:
    """Microseconds per ``sched.step()`` on the transformer's 7 layers, every one frozen (what a step adds)."""
    _, sched = rig("transformer", 1, "freezeout", False)
    sched.total_steps = 10**9  # far from the end: every call is a plain step of the schedule
    start = clock()
    with warnings.catch_warnings():  # the rig's warm-up stepped the optimizer alone: FreezeOut says so, rightly
        warnings.simplefilter("ignore", freezeout.ScheduleWarning)
        for _ in range(calls):
            sched.step()
    return 1e6 * (clock() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="thread")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("transformer", 1), ("transformer", 32), ("resnet", 1), ("resnet", 16)]
    rows = []
    print(f"{'model':<12} {'batch':>5} {'fuse':>5} {'ratio':>6} {'(quartiles)':>15} {'hand ms':>8} {'ours ms':>8}")
    for kind, batch in cases:
        for fuse in (False, True):
            row = ratio(kind, batch, fuse, args.rounds, args.reps, CLOCKS[args.clock])
            rows.append(row)
            q = row["ratio_quartiles"]
            print(f"{kind:<12} {batch:>5} {'on' if fuse else 'off':>5} {row['ratio']:>6.3f} "
                  f"({q[0]:.3f}..{q[2]:.3f}) {row['step_ms_by_hand']:>8.2f} {row['step_ms_freezeout']:>8.2f}",
                  flush=True)  # fmt: skip
    us = sched_step_us(CLOCKS[args.clock])
    print(f"sched.step(): {us:.1f} us per call")
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f}: {'within' if worst <= 1.02 else 'over'} the 1.02 target")
    if args.out:
        info = {"torch": torch.__version__, "threads": 1, "rounds": args.rounds, "reps": args.reps, "clock": args.clock}
        atomic_json(args.out, {"setup": info, "rows": rows, "sched_step_us": us, "worst_ratio": worst})
    assert all(math.isfinite(r["ratio"]) for r in rows)


if __name__ == "__main__":
    main()
