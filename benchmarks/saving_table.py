"""The BENCHMARKS.md table: paper, calibrated, ideal and realized saving of the 4 strategies x t0 values.

Runs ``freezeout bench`` (one step-time curve reused for every row; baseline and FreezeOut runs
alternated, medians) and renders its JSON as a Markdown table with the targets checked.

    PYTHONPATH=. .venv/bin/python benchmarks/saving_table.py                       # DenseNet-BC-76, batch 50
    PYTHONPATH=. .venv/bin/python benchmarks/saving_table.py --render FILE.json   # table from a saved run
    PYTHONPATH=. .venv/bin/python benchmarks/saving_table.py --depth 10 --growth 2 --batch-size 8 --steps 12  # quick
    PYTHONPATH=. .venv/bin/python benchmarks/saving_table.py --compare-fuse   # every row with folding on and off

Other flags go to ``freezeout bench`` (``--no-fuse``, ``--compare-fuse``, ``--repeats``, ``--device``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from freezeout.cli import main as cli_main
from freezeout.experiment.runfiles import atomic_bytes


def render(result: dict) -> str:
    cfg = result["config"]
    base = result["baseline"]
    both = len({row.get("fuse", True) for row in result["rows"]}) > 1
    lines = [
        f"{result['model']['name']}-{result['model']['depth']} (k={result['model']['growth']}), input "
        f"{tuple(result['input_shape'])}, {cfg['steps']} steps, {cfg['repeats']} "
        f"{'lockstep' if cfg.get('lockstep') else 'alternating'} repeats, "
        f"{result['threads']} threads on {result['device']}; baseline {1e3 * base['step_seconds']:.0f} ms/step",
        "",
        "| schedule | LR | t0 |" + (" fuse |" if both else "") + " paper | paper ×1.3 | calibrated | ideal | "
        "realized | realized/ideal | realized − calibrated | step() with freezes |",
        "|---|---|---|" + ("---|" if both else "") + "---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ratio = row["realized_saving"] / row["ideal_saving"] if row["ideal_saving"] else float("nan")
        gap = 100 * (row["realized_saving"] - row["calibrated_saving"])
        lines.append(
            f"| {row['schedule']} | {'scaled' if row['scale_lr'] else 'unscaled'} | {row['t0']:g} "
            + (f"| {'on' if row['fuse'] else 'off'} " if both else "")
            + f"| {100 * row['paper_saving']:.1f}% | {100 * row['paper_saving_corrected']:.1f}% "
            f"| {100 * row['calibrated_saving']:.1f}% | {100 * row['ideal_saving']:.1f}% "
            f"| **{100 * row['realized_saving']:.1f}%** | {ratio:.3f} | {gap:+.1f} pp "
            f"| {100 * row['sched_step_fraction']:.3f}% |"
        )
    sched = result["sched_step"]
    saved = result["memory"]["saved_for_backward_bytes"]
    curves = {name: c["step_times"] for name, c in result.get("curves", {}).items()} or {"": result["step_times"]}
    lines += [
        "",
        f"- A steady `sched.step()` on its own (no freeze): {1e6 * sched['seconds_per_call']:.1f} µs per call = "
        f"{100 * sched['fraction_of_step']:.4f} % of a baseline step; the column *step() with freezes* is every "
        "`sched.step()` call of the run, the freezes included, over the rest of its training time.",
        f"- Saved for backward: {saved['none_frozen'] / 2**20:.1f} MiB with nothing frozen, "
        f"{saved['all_frozen'] / 2**20:.2f} MiB with every layer frozen.",
    ]
    if both:
        plain = {(r["schedule"], r["scale_lr"], r["t0"]): r["realized_saving"] for r in result["rows"] if not r["fuse"]}
        gains = [
            f"{r['schedule']} {'scaled' if r['scale_lr'] else 'unscaled'} {r['t0']:g}: "
            f"{100 * (r['realized_saving'] - plain[(r['schedule'], r['scale_lr'], r['t0'])]):+.1f} pp"
            for r in result["rows"]
            if r["fuse"]
        ]
        lines.append("- Realized saving, fused − plain: " + ", ".join(gains))
    for name, curve in curves.items():
        ks = sorted({*range(0, len(curve), 4), len(curve) - 1})
        lines.append(
            f"- Step time T(k) with k layers frozen{f' ({name})' if name else ''}, relative to T(0): "
            + ", ".join(f"{k}: {curve[k] / curve[0]:.2f}" for k in ks)
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--render", type=Path, help="only render a saved JSON")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/saving_table.json"))
    args, rest = ap.parse_known_args()
    if not args.render:
        defaults = ["--depth", "76", "--growth", "12", "--batch-size", "50", "--steps", "40", "--repeats", "3"]
        argv = ["bench", *defaults, "--schedule", "all", "--t0", "0.5", "0.8", *rest, "--out", str(args.out)]
        code = cli_main(argv)
        if code:
            sys.exit(code)
    result = json.loads((args.render or args.out).read_text())
    table = render(result)
    print(table)
    atomic_bytes((args.render or args.out).with_suffix(".md"), (table + "\n").encode())


if __name__ == "__main__":
    main()
