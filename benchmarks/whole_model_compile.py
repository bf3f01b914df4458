"""A whole-model ``torch.compile`` (nanoGPT's ``compile = True``) under FreezeOut: recompiles, and step time per phase.

Run: .venv/bin/python benchmarks/whole_model_compile.py [--blocks 8 --dim 64 --steps 200] [--no-allowance] [--untied]

A small GPT (token and position embeddings, ``--blocks`` pre-norm transformer blocks, a head tied to the token
embedding as nanoGPT's) trains under FreezeOut (linear, t0 = 0.3: the position embedding and every block freeze, one
phase each) twice in lockstep, an eager copy and a ``torch.compile(model)`` copy (inductor, a fresh cache: every
compile is timed cold) of the same weights, their steps alternated. Per phase (the steps between two freezes, less
the first after each freeze when it compiled) the median step time of each, their ratio, and whether the phase got
a graph of its own (none: dynamo had given up and ran it eagerly); the seconds of each step that compiled.
``--no-allowance`` keeps torch's recompile limit (8) as it is: what FreezeOut did before it raised the limit.
``--untied``: the token embedding untied from the head and frozen with the position embedding, so that nothing
trainable flows into the frozen layers. Writes benchmarks/results/whole_model_compile[_no_allowance][_untied].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))  # cold: no earlier run's cache

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import freezeout
from freezeout import compat


class GPT(nn.Module):
    def __init__(self, vocab: int, dim: int, blocks: int, context: int, tied: bool = True) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.h = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(blocks)
        )
        self.ln_f, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight  # nanoGPT's tying
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x, src_mask=self.mask, is_causal=True)
        return self.head(self.ln_f(x))


def run_step(model, opt, sched, x, y) -> float:
    t = time.perf_counter()
    logits = model(x)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-allowance", action="store_true", help="keep torch's recompile limit")
    ap.add_argument("--backend", default="inductor", help="torch.compile's backend (eager: dynamo alone, fast)")
    ap.add_argument("--untied", action="store_true", help="untie the head; the token embedding freezes first")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = 8  # torch's default, stated
    if args.no_allowance:
        compat.raise_recompile_limit = lambda by: None  # what FreezeOut did before it raised the limit
    copies = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = GPT(256, args.dim, args.blocks, args.context, tied=not args.untied)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        layers = [[model.wte, model.wpe] if args.untied else model.wpe, *model.h]
        sched = freezeout.FreezeOut(opt, layers, args.steps, t0=0.3, schedule="linear")
        copies[name] = (torch.compile(model, backend=args.backend) if name == "compiled" else model, opt, sched)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(256, (args.steps, args.batch, args.context + 1), generator=g)
    rows, recompile_s, frames_before = [], [], 0
    for s in range(args.steps):
        x, y = data[s, :, :-1], data[s, :, 1:]
        frozen = copies["eager"][2].num_frozen
        times = {name: run_step(*copies[name], x, y) for name in copies}
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        if frames > frames_before:
            recompile_s.append(times["compiled"])
        rows.append({"step": s, "frozen": frozen, "new_graphs": frames - frames_before, **times})
        frames_before = frames
    phases = []
    for k in sorted({r["frozen"] for r in rows}):
        phase = [r for r in rows if r["frozen"] == k]
        steady = [r for r in phase if not r["new_graphs"]]
        if steady:  # a phase without a graph of its own ran eagerly: dynamo gave up
            eager = statistics.median(r["eager"] for r in steady)
            comp = statistics.median(r["compiled"] for r in steady)
            own = any(r["new_graphs"] for r in phase)
            phases.append({"frozen": k, "steps": len(steady), "own_graph": own, "eager_ms": 1e3 * eager,
                           "compiled_ms": 1e3 * comp, "compiled_over_eager": comp / eager})  # fmt: skip
    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "graphs": frames_before,
        "recompile_limit_at_end": torch._dynamo.config.recompile_limit,
        "compile_seconds": recompile_s,
        "phases": phases,
    }
    print(f"graphs compiled: {frames_before}; recompile limit at the end {summary['recompile_limit_at_end']}")
    print("compile (s) per graph:", " ".join(f"{t:.1f}" for t in recompile_s))
    print(f"{'frozen':>6} {'steps':>5} {'graph':>6} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15}")
    for p in phases:
        print(f"{p['frozen']:>6} {p['steps']:>5} {'own' if p['own_graph'] else 'none':>6} {p['eager_ms']:>9.1f} "
              f"{p['compiled_ms']:>12.1f} {p['compiled_over_eager']:>15.2f}")  # fmt: skip
    suffix = ("_no_allowance" if args.no_allowance else "") + ("_untied" if args.untied else "")
    out = args.out or Path(f"benchmarks/results/whole_model_compile{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
