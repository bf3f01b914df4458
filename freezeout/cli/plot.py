"""``freezeout plot``: the paper's Figure 1 (LR schedules) and Figure 2 (a sweep's speedup vs. error)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError, path

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw Figure 1 (LR schedules) and Figure 2 (a sweep's speedup vs. test error, its table beside it)",
        description="Figure 1 needs no data; Figure 2 reads a sweep directory's finished runs (nothing is retrained).",
    )
    p.add_argument(
        "--sweep", type=path, metavar="SWEEP_DIR", help="sweep directory for Figure 2 (from `freezeout sweep`)"
    )
    p.add_argument("--out", type=path, required=True, metavar="DIR", help="folder for figure1.png / figure2.png")
    p.add_argument(
        "--figure",
        choices=("1", "2", "all"),
        default=None,
        help="which figure (default: both with --sweep, else 1)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    figure = args.figure or ("all" if args.sweep else "1")
    if figure in ("2", "all") and not args.sweep:
        raise CLIError("Figure 2 needs --sweep SWEEP_DIR (a folder made by `freezeout sweep`)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("plotting needs matplotlib: pip install 'freezeout[plot]'") from None
    from ..experiment.folders import check_not_file
    from ..experiment.plot import plot_figure1, plot_figure2
    from ..experiment.runfiles import check_writable

    out = Path(args.out)
    check_not_file(out)  # the wording of every command's refusal of a file for a folder
    table = None
    if figure in ("2", "all"):  # first: a folder with nothing to plot fails before anything is created
        from ..experiment.aggregate import aggregate

        table = aggregate(args.sweep, paper=False)
    check_writable(out, "--out")  # a read-only folder named as the user gave it, before any figure is drawn
    written = [plot_figure1(out / "figure1.png")] if figure in ("1", "all") else []
    if table is not None:
        from ..experiment.runfiles import atomic_bytes
        from ..experiment.tables import markdown_table

        written.append(plot_figure2(out / "figure2.png", table))
        atomic_bytes(out / "aggregate.md", markdown_table(table).encode())  # the figure's numbers, as a table
        written.append(out / "aggregate.md")
    for written_path in written:
        print(f"wrote {written_path}")
    return 0
