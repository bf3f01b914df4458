"""``freezeout bench``: the real wall-clock saving of FreezeOut against the t0 = 1 baseline, and the estimates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .common import pct
from .estimate import add_model_args, build, model_record, strategies
from .output import Progress

if TYPE_CHECKING:
    from ..analysis.bench import BenchResult

__all__ = ["MIN_STEPS", "add_parser", "print_result", "warnings"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .common import MAX_REPEATS, MAX_SEED, MAX_STEPS, int_in, path

    p = sub.add_parser(
        "bench",
        help="measure FreezeOut's real saving vs. the baseline, next to the estimates",
        description="Train the baseline (t0 = 1) and FreezeOut on random batches of the model's input shape over a "
        "compressed schedule of --steps steps, alternating (or in --lockstep), and print each strategy's realized "
        "saving next to the paper's estimate, the calibrated one and the ideal (the measured step-time curve "
        "integrated over the same schedule). Its progress shows on stderr; docs/BENCHMARKS.md has the tables it made.",
    )
    add_model_args(p)
    b = p.add_argument_group("benchmark")
    b.add_argument(
        "--steps",
        type=int_in(MIN_STEPS, MAX_STEPS),
        default=40,
        help=f"steps of the compressed schedule (default 40; at least {MIN_STEPS}: a layer must freeze before the end)",
    )
    b.add_argument(
        "--repeats", type=int_in(1, MAX_REPEATS), default=3, help="alternating runs per row, median (default 3)"
    )
    b.add_argument(
        "--curve-repeats", type=int_in(1, MAX_REPEATS), default=3, help="timed steps per k of the curve (default 3)"
    )
    b.add_argument(
        "--curve-points",
        type=int_in(2, MAX_STEPS),
        default=41,
        help="k values measured, rest interpolated (default 41)",
    )
    b.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="seed of the random data (default 0)")
    b.add_argument(
        "--compare-fuse",
        action="store_true",
        help="also run every row with the other --fuse setting, alternating in the same rounds (twice the time)",
    )
    b.add_argument(
        "--lockstep",
        action="store_true",
        help="run the rows of a repeat step by step together instead of one after another: steadier ratios on a "
        "machine whose speed drifts (a shared CPU); the step-time curve is then timed in pairs with an unfrozen step",
    )
    b.add_argument("--out", type=lambda t: Path(path(t)), default=None, help="write the results as JSON here")
    b.add_argument("--quiet", action="store_true", help="no progress (bar or lines) on stderr")
    p.set_defaults(func=run)


# With fewer steps no layer of the paper's default (cubic, t0 = 0.8: the first freezes at 51 % of the run) freezes
# before the last step: there would be no saving to measure, only the runs' noise.
MIN_STEPS = 3
# Past this share of the training time, FreezeOut's one-off work per freeze (tracing, folding: milliseconds per
# layer) is what a row measures, not the saving of a real run of thousands of steps (docs/BENCHMARKS.md).
ONE_OFF_SHARE = 0.05


def _check_out(out: Path) -> None:
    """``--out`` must be a file that can be written, known before the benchmark runs, not after."""
    from ..experiment.runfiles import check_writable

    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the name of the JSON file to write")
    check_writable(out.parent, name="the folder of --out")  # creates it, as writing the results would


def run(args: argparse.Namespace) -> int:
    from ..analysis.bench import BenchConfig, run_bench, total_work
    from ..analysis.flops import layer_flops_meta
    from ..experiment.runfiles import atomic_json

    if args.out:
        _check_out(args.out)

    # besides the probe's work: the template and the running copy of the model, and up to 4 batches of data
    model, layers, x = build(args, training=True, copies=2, inputs=4)
    config = BenchConfig(
        steps=args.steps,
        repeats=args.repeats,
        strategies=strategies(args),
        t0s=args.t0,
        curve_repeats=args.curve_repeats,
        curve_points=args.curve_points,
        seed=args.seed,
        device=args.device,
        fuse=args.fuse,
        compare_fuse=args.compare_fuse,
        lockstep=args.lockstep,
    ).validate()
    with Progress("bench", "bench", total_work(config, len(layers)), unit="training step", quiet=args.quiet) as bar:
        result = run_bench(model, layers, x, config, progress=bar.update, flops=layer_flops_meta(model, layers, x))
    result.model = model_record(args)
    print_result(result, args)
    if args.out:
        atomic_json(args.out, result.to_dict())
        print(f"wrote {args.out}")
    return 0


def print_result(result: BenchResult, args: argparse.Namespace) -> None:
    """The benchmark as a table, a row per strategy and t0, and its footnotes."""
    from ..experiment.progress import plural

    base = result["baseline"]
    print(
        f"{args.model}-{args.depth} (width {args.growth}), batch {args.batch_size}, {plural(args.steps, 'step')}, "
        f"{plural(result['num_layers'], 'layer')}, {plural(result['threads'], 'thread')} on {result['device']}: "
        f"baseline {base['seconds']:.2f} s ({1e3 * base['step_seconds']:.1f} ms/step)"
    )
    print(
        f"{'schedule':<8} {'LR':<8} {'t0':>5} {'fuse':>5} {'paper':>7} {'paper*':>7} {'calibr.':>7} {'ideal':>7} "
        f"{'0-cost':>7} {'realized':>8} {'real/ideal':>10} {'step()+frz':>10}"
    )
    for row in result["rows"]:
        ratio = f"{row['realized_saving'] / row['ideal_saving']:>10.3f}" if row["ideal_saving"] else f"{'-':>10}"
        print(
            f"{row['schedule']:<8} {'scaled' if row['scale_lr'] else 'unscaled':<8} {row['t0']:>5.2f} "
            f"{'on' if row['fuse'] else 'off':>5} "
            f"{pct(row['paper_saving'])} {pct(row['paper_saving_corrected'])} {pct(row['calibrated_saving'])} "
            f"{pct(row['ideal_saving'])} {pct(row['zero_cost_saving'])} "
            f"{pct(row['realized_saving']):>8} {ratio} "
            f"{100 * row['sched_step_fraction']:>9.3f}%"
        )
    if args.lockstep:
        flat = ", ".join(f"{row['name']} {100 * row['ideal_saving_flat']:.1f}%" for row in result["rows"])
        print(f"lockstep: ideal = the curve on the baseline's own step times, each repeat; flat over the run: {flat}")
    sched, mem = result["sched_step"], result["memory"]
    saved = mem["saved_for_backward_bytes"]
    print("paper* = with the authors' x1.3 for linear")
    print("0-cost = frozen layers at no cost (paper's FLOPs): the bound of the frozen-prefix cache (docs/CACHE.md)")
    print(
        "step()+frz = the run's sched.step() calls, freezes included (folds: next forward), over the rest of its "
        f"training time; a steady sched.step() alone (no freeze): {1e6 * sched['seconds_per_call']:.1f} us "
        f"= {100 * sched['fraction_of_step']:.4f}% of a baseline step"
    )
    print(
        f"saved for backward: {saved['none_frozen'] / 2**20:.1f} MiB (none frozen) -> "
        f"{saved['all_frozen'] / 2**20:.1f} MiB (all frozen)"
    )
    for line in warnings(result, args.steps):
        print(f"warning: {line}")


def warnings(result: BenchResult, steps: int) -> list[str]:
    """What makes rows of ``result`` (a run of ``steps`` steps) no measure of FreezeOut's saving: no layer froze
    before the end, or the one-off work of the freezes outweighs what a freeze saves in so short a run."""
    from ..experiment.progress import plural

    out = []
    idle = [row["name"] for row in result["rows"] if not row["ideal_saving"]]
    if idle:
        out.append(
            f"no layer froze before the last of the {plural(steps, 'step')} in {', '.join(idle)}: realized is the "
            "runs' noise and FreezeOut's first-step work, not a saving (ideal 0); use more --steps (default 40)"
        )
    heavy = [row for row in result["rows"] if row["ideal_saving"] and row["sched_step_fraction"] > ONE_OFF_SHARE]
    if heavy:
        worst = max(row["sched_step_fraction"] for row in heavy)
        out.append(
            f"in {', '.join(row['name'] for row in heavy)} the freezes' one-off work in sched.step() took up to "
            f"{worst:.0%} of the training time: {plural(steps, 'step')} are too few for it to vanish as in a real "
            "run, so realized is low; use more --steps (default 40)"
        )
    return out
