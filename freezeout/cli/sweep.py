"""``freezeout sweep``: the paper's study, strategies x t0 x seeds plus a baseline per seed, resumable."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..schedule import STRATEGIES
from .common import MAX_REPEATS, MAX_SEED, add_config_arguments, config_from_args, int_in, notifier, path, pct

__all__ = ["add_parser", "format_table"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run strategies x t0 x seeds plus a baseline per seed (resumable), then aggregate",
        description="One run folder per point inside --out; re-running skips finished runs and resumes interrupted "
        "ones. Ends by writing aggregate.csv and aggregate.json into --out. The other flags set the base config.",
    )
    g = p.add_argument_group("grid")
    g.add_argument(
        "--strategies", nargs="*", choices=list(STRATEGIES), default=list(STRATEGIES), help="(default: all four)"
    )
    g.add_argument(
        "--t0",
        dest="t0s",
        metavar="T0",
        nargs="*",
        type=float,
        default=[0.5, 0.65, 0.8],
        help="values in (0, 1) (default: %(default)s)",
    )
    g.add_argument("--seeds", nargs="*", type=int_in(0, MAX_SEED), default=[0, 1], help="(default: %(default)s)")
    g.add_argument(
        "--shorter",
        metavar="F",
        nargs="*",
        type=float,
        default=[],
        help="also train each seed's baseline for these fractions of the epochs, in (0, 1): the equal-time "
        "baselines (default: none)",
    )
    g.add_argument(
        "--lockstep",
        action="store_true",
        help="train each seed's runs side by side, step by step, so that their times compare fairly (one process)",
    )
    g.add_argument("--out", type=path, required=True, metavar="SWEEP_DIR", help="sweep folder (created, or resumed)")
    g.add_argument("--dry-run", action="store_true", help="print the grid and the estimated time; run nothing")
    g.add_argument(
        "--timing-steps",
        type=int_in(0, MAX_REPEATS),
        default=3,
        help="SGD steps timed for the dry run's estimate (0: count only)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p, per_run=False)
    p.set_defaults(
        func=run,
        interrupted=lambda args: (
            "the same command continues: finished runs are skipped, an "
            "interrupted one resumes after its last finished epoch"
        ),
    )


def _pct(x: Any) -> str:
    return pct(x, digits=2, suffix="")


def _plain(x: Any) -> str:
    return f"{'-':>6}" if x is None or math.isnan(x) else f"{x:6.3f}"


def format_table(rows: list[dict[str, Any]], metric: str = "test_error") -> str:
    """The aggregate as aligned text, ``mean ± std`` over seeds: errors in percent, bits per byte as they are."""
    error = metric.endswith("error")
    name = "test error %" if error else "bits per byte"

    def cell(r: dict[str, Any], key: str) -> str:
        as_is = not error and key in (metric, "error_increase", "vs_equal_time")  # bits per byte, not a fraction
        mean, std = (r.get(f"{key}_{stat}", math.nan) for stat in ("mean", "std"))
        return f"{_plain(mean) if as_is else _pct(mean)} ± {_plain(std) if as_is else _pct(std)}"

    lines = [
        f"{'strategy':<16} {'t0':>5} {'steps':>5} {'n':>2}  {name:>15}  {'time saved %':>15}  {'rel. increase %':>15}  "
        f"{'vs baseline':>15}  {'vs equal time':>15}  {'paper %':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['strategy']:<16} {r['t0']:>5g} {r.get('fraction', 1.0):>5.0%} {r['n']:>2}  {cell(r, metric)}  "
            f"{cell(r, 'speedup')}  {cell(r, 'rel_error')}  {cell(r, 'error_increase')}  {cell(r, 'vs_equal_time')}  "
            f"{_pct(r['paper_speedup']):>7}"
        )
    return "\n".join(lines)


def _fit_batch(config: Any, dry_run: bool) -> tuple[Any, str | None]:
    """The base config with its batch clipped to the training set, and the line that says so
    (``config.fit_batch``). A dry run may plan a sweep whose data is not there yet: it plans with the batch given."""
    from ..experiment.config import fit_batch, train_examples

    try:
        examples = train_examples(config)
    except ValueError:
        if dry_run:
            return config, None
        raise
    return fit_batch(config, examples)


def run(args: argparse.Namespace) -> int:
    from ..experiment.plan import dry_run
    from ..experiment.progress import plural
    from ..experiment.sweep import Grid, check_shorter, run_sweep

    config = config_from_args(args)
    grid = Grid(tuple(args.strategies), tuple(args.t0s), tuple(args.seeds), tuple(args.shorter)).validate()
    check_shorter(config, grid)  # before anything is created
    config, clipped = _fit_batch(config, args.dry_run)
    notify = notifier("sweep")
    if args.dry_run:
        plan = dry_run(config, grid, args.out, timing_steps=args.timing_steps)
        if clipped:  # after the checks: a refusal is the one line on stderr
            notify(clipped)
        for row in plan["runs"]:
            print(f"{row['name']:<36} {row['status']:<12} {plural(row['epochs'], 'epoch')}")
        print(
            f"{plural(plan['num_runs'], 'run')}, {plan['num_to_run']} to run, "
            f"{plural(plan['epochs_to_run'], 'epoch')} to run"
        )
        e = plan["estimate"]
        if e is not None:
            print(f"estimated time: {e['seconds'] / 3600:.2f} h ({e['seconds']:.0f} s; {e['method']})")
        return 0
    from ..experiment.aggregate import aggregate, write_aggregate
    from ..experiment.folders import check_folder
    from ..experiment.lock import run_lock

    check_folder(args.out, "sweep")
    if clipped:
        notify(clipped)

    with run_lock(args.out):  # the sweep and its aggregate: no other process writes in the folder meanwhile
        run_sweep(config, grid, args.out, progress=not args.no_progress, lockstep=args.lockstep)
        table = aggregate(args.out)
        csv_path, _ = write_aggregate(table, args.out)
    print(format_table(table["rows"], table["metric"]))
    print(f"wrote {csv_path}, aggregate.json and aggregate.md")
    return 0
