"""Why the step-time curve warms up first: T(k) measured at the start of a process vs after some steps.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/curve_warmup.py [--out FILE]
In one process: a curve on a few k's with no warm-up round, a plain training loop, the same curve again,
the loop again (DenseNet-BC-76 k12, batch 50). Measured here in two runs: T(0) 1.135 / 1.151 s first,
1.021 / 0.972 s second, loop median 1.005 / 1.009 s: a curve taken first overstated T(0), which normalises
every saving, by ~10-15 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from freezeout.analysis.timing import step_time_curve
from freezeout.analysis.workload import copy_model, make_optimizer, random_targets, train_step
from freezeout.experiment.models.densenet import densenet_bc
from freezeout.experiment.runfiles import atomic_json

KS = [0, 1, 2, 3, 10, 20, 39]


def loop_steps(model, layers, x, steps: int) -> list[float]:
    clone, clone_layers = copy_model(model, layers)
    opt = make_optimizer(clone, clone_layers)
    y = random_targets(clone, x)
    clone.train()
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(clone, opt, x, y, F.cross_entropy)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/curve_warmup.json"))
    ap.add_argument("--loop-steps", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = densenet_bc(76, 12, 10)
    x = torch.randn(50, 3, 32, 32)
    phases = []
    for name in ("curve first", "loop", "curve again", "loop again"):
        if name.startswith("curve"):
            curve = step_time_curve(model, model.layers, x, ks=KS, repeats=3, warm_rounds=0)
            times = {str(k): curve["step_times"][k] for k in KS}
            phases.append({"phase": name, "step_times": times})
            print(f"{name:12s} " + " ".join(f"T({k})={t:.3f}" for k, t in times.items()))
        else:
            steps = loop_steps(model, model.layers, x, args.loop_steps)
            med = statistics.median(steps[3:])
            phases.append({"phase": name, "steps": steps, "median_after_3": med})
            print(f"{name:12s} median step {med:.3f} s (first {steps[0]:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, {"threads": torch.get_num_threads(), "ks": KS, "phases": phases})


if __name__ == "__main__":
    main()
