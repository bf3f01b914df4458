"""Where a run's realized saving falls short of the ideal: its own steps at each k against the paired curve.

Run: PYTHONPATH=. .venv/bin/python benchmarks/realized_gap.py [--steps 40] [--repeats 2] [--out FILE]
DenseNet-BC-76 k12, batch 50, channels-last, the paper default (cubic, scaled, t0 = 0.8) against the t0 = 1
baseline, in lockstep (``analysis.runs``), each repeat after a slice of the paired step-time curve, as
``freezeout bench --lockstep`` does. Every step of the run is set beside the baseline's step of the same
seconds: its ratio, grouped by the layers frozen during it, is the run's own curve, and

- ``run_weighted_ideal``: the saving if each run step had cost the curve's ratio ``T(k)/T(0)`` times the
  baseline step beside it (the ideal, on the run's own baseline seconds);
- ``excess``: the run's seconds beyond that, split into the steps right after a freeze (fold, guard pass, first
  forward of a new frozen prefix) and the rest.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from freezeout.analysis.cost import integrate_on_baseline, interpolate_step_times
from freezeout.analysis.runs import lockstep_runs
from freezeout.analysis.timing import curve_from_samples, default_ks, step_time_curve
from freezeout.analysis.workload import copy_model, model_loss, random_targets
from freezeout.experiment.models import build_example, example_input
from freezeout.experiment.runfiles import atomic_json


def analyse(curve: list[float], runs: list[dict], name: str) -> dict:
    """Per repeat: realized, run-weighted ideal and the excess split by step kind; per k: the run's own ratios."""
    ratio = [t / curve[0] for t in curve]
    by_k: dict[int, list[float]] = defaultdict(list)
    repeats = []
    for done in runs:
        run, base = done[name], done["baseline"]
        total_b = sum(base["step_seconds"])
        excess_after = excess_other = 0.0
        prev = 0
        for t, b, k in zip(run["step_seconds"], base["step_seconds"], run["step_frozen"], strict=True):
            by_k[k].append(t / b)
            if k > prev:
                excess_after += t - ratio[k] * b
            else:
                excess_other += t - ratio[k] * b
            prev = k
        repeats.append(
            {
                "realized": 1 - sum(run["step_seconds"]) / total_b,
                "run_weighted_ideal": integrate_on_baseline(curve, run["step_frozen"], base["step_seconds"])["saving"],
                "excess_after_freeze": excess_after / total_b,
                "excess_other": excess_other / total_b,
                "sched_fraction": run["sched_seconds"] / total_b,
            }
        )
    per_k = {k: {"run": statistics.median(v), "curve": ratio[k], "steps": len(v)} for k, v in sorted(by_k.items())}
    return {"repeats": repeats, "per_k": per_k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--curve-points", type=int, default=14)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--twin", action="store_true", help="a second baseline in the lockstep: the noise floor")
    ap.add_argument("--no-curve", action="store_true", help="runs only (with --twin: the noise floor alone)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/realized_gap.json"))
    args = ap.parse_args()
    shape = (3, 32, 32)
    model, _ = build_example("densenet-bc", 76, 12, 10, shape, 1)
    layers, n, fuse = model.layers, len(model.layers), not args.no_fuse
    x = example_input(shape, 50)
    template = copy_model(model, layers)
    data = [(example_input(shape, 50, seed=i), random_targets(template[0], x, seed=i)) for i in range(4)]
    specs = [("baseline", 1.0, "cubic", True, fuse), ("run", 0.8, "cubic", True, fuse)]
    if args.twin:
        specs.append(("twin", 1.0, "cubic", True, fuse))
    samples: dict[str, list] = defaultdict(list)
    neighbours: dict[str, list] = defaultdict(list)
    runs = []
    for r in range(args.repeats):
        first = r == 0
        c = {"samples": {}, "neighbour_samples": {}} if args.no_curve else step_time_curve(
            model, layers, x, ks=default_ks(n, args.curve_points), repeats=2, warmup=2 if first else 0,
            warm_rounds=1 if first else 0, fuse=fuse, paired=True,
        )  # fmt: skip
        for k in c["samples"]:
            samples[k] += c["samples"][k]
            neighbours[k] += c["neighbour_samples"][k]
        shift = r % len(specs)
        runs.append(lockstep_runs(template, data, model_loss, args.steps, 0.1, specs[shift:] + specs[:shift]))
        done = runs[-1]
        saved = {s[0]: 1 - done[s[0]]["seconds"] / done["baseline"]["seconds"] for s in specs[1:]}
        print(f"repeat {r}: saving " + " ".join(f"{k} {v:.3f}" for k, v in saved.items()), flush=True)
    out: dict = {}
    if args.twin:  # identical runs: the spread of their step ratios is the machine's, no FreezeOut in it
        ratios = [t / b for d in runs for t, b in zip(d["twin"]["step_seconds"], d["baseline"]["step_seconds"])]
        q = statistics.quantiles(ratios, n=10)
        out["twin_step_ratio_deciles"] = q
        print(f"twin/baseline step ratio: median {statistics.median(ratios):.3f}, 10-90 % {q[0]:.3f}-{q[-1]:.3f}")
    if not args.no_curve:
        out["curve"] = interpolate_step_times(curve_from_samples(samples, neighbours), n)
        out.update(analyse(out["curve"], runs, "run"))
        for rep in out["repeats"]:
            print(" ".join(f"{k} {v:.3f}" for k, v in rep.items()))
        for k, v in out["per_k"].items():
            print(f"k={k:2d} steps {v['steps']:3d} run {v['run']:.3f} curve {v['curve']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, {"args": vars(args) | {"out": str(args.out)}, "threads": torch.get_num_threads(), **out,
                           "runs": runs})  # fmt: skip


if __name__ == "__main__":
    main()
