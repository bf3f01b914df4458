"""``freezeout demo``: baseline vs the paper's FreezeOut on the embedded digits, as a small table."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .common import MAX_EPOCHS, MAX_SEED, int_in, notifier, path

__all__ = ["add_parser", "saving_line"]

EPOCHS = 20  # experiment.demo.DEMO's; here so that --help needs no torch import


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train baseline vs FreezeOut in lockstep on the embedded digits data: the saving, in a minute",
        description="Train a small DenseNet-BC on the embedded digits twice: the baseline (plain cosine, t0 = 1) "
        "and the paper's recommended FreezeOut (cubic, scaled, t0 = 0.8), their steps in lockstep (interleaved in "
        "one process, so that a machine whose speed drifts moves both alike); print time and accuracy of each and "
        "the saving, with its spread over the epochs.",
    )
    p.add_argument("--out", type=path, help="folder for both runs' results (default: a new temporary folder)")
    p.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), default=EPOCHS, help="(default: %(default)s)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, interrupted=interrupted)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves to do: the demo continues where it stopped when run again on its folder."""
    folder = getattr(args, "folder", None)
    if folder is None:
        return "nothing was trained yet"
    again = "the same command" if args.out else f"the same command with --out {folder}"
    return f"{again} continues where it stopped"


def run(args: argparse.Namespace) -> int:
    from ..experiment.demo import DEMO, run_demo, table
    from ..experiment.progress import plural

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="freezeout-demo-"))
    args.folder = out  # for the line of an interruption
    result = run_demo(out, args.epochs, args.seed, not args.no_progress, notify=notifier("demo"))
    print(table(result))
    lock, runs = result["lockstep"], result["runs"]
    steps = runs["baseline"]["steps_per_epoch"]
    print(
        f"DenseNet-BC-{DEMO['depth']} k={DEMO['growth']}, {plural(args.epochs, 'epoch')} x {plural(steps, 'step')} on "
        "the embedded digits, one CPU thread"
    )
    print(saving_line(lock, args.epochs))
    print(f"results in {out}/ (demo.json; each run's metrics.jsonl and summary.json)")
    return 0


def saving_line(lock: dict, epochs: int) -> str:
    """How the saving was measured and how it spread over the epochs."""
    from ..experiment.progress import plural

    if lock["saving"] is None:
        return "saving: no epoch of the two runs was timed in lockstep (a demo folder of an older version?)"
    n, noise = len(lock["epochs"]), lock.get("saving_noise")
    text = f"saving {lock['saving']:.1%} of training time"
    text += "" if noise is None else f" (the timing's noise alone: ± {100 * noise:.1f} pp)"
    text += (
        f", the runs' steps in lockstep (evaluation outside the timing) over {n} of {plural(epochs, 'epoch')}; "
        f"per epoch {lock['epoch_saving_min']:.1%} to {lock['epoch_saving_max']:.1%}, median "
        f"{lock['epoch_saving_median']:.1%}"
    )
    alike = lock["alike_savings"]
    if alike:
        text += (
            f"; in the {plural(len(alike), 'epoch')} before the first freeze (the same work in both) "
            f"{min(alike):.1%} to {max(alike):.1%}, the noise"
        )
    return text
