"""``freezeout demo``: baseline vs the paper's FreezeOut on the embedded digits, as a small table."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .common import MAX_EPOCHS, MAX_SEED, int_in, path

__all__ = ["add_parser"]

EPOCHS = 20  # experiment.demo.DEMO's; here so that --help needs no torch import


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train baseline vs FreezeOut on the embedded digits data",
        description="Train a small DenseNet-BC on the embedded digits twice: the baseline (plain cosine, t0 = 1) "
        "and the paper's recommended FreezeOut (cubic, scaled, t0 = 0.8); print time and accuracy of each.",
    )
    p.add_argument("--out", type=path, help="folder for both runs' results (default: a new temporary folder)")
    p.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), default=EPOCHS, help="(default: %(default)s)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiment.demo import DEMO, run_demo, table

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="freezeout-demo-"))
    summaries = run_demo(
        out,
        args.epochs,
        args.seed,
        not args.no_progress,
        on_start=lambda name: print(f"training {name} ...", flush=True),
    )
    print(table(summaries))
    steps = summaries["baseline"]["steps_per_epoch"]
    print(
        f"DenseNet-BC-{DEMO['depth']} k={DEMO['growth']}, {args.epochs} epochs x {steps} steps on the embedded digits"
    )
    print(f"(train s: training time without evaluation; one CPU thread); results in {out}/")
    return 0
