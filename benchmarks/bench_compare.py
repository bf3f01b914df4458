"""Two versions of the code, one machine: what their ``freezeout bench --lockstep --compare-fuse`` files say, side by
side (docs/BENCHMARKS.md, log of 2026-12-05).

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_compare.py [FOLDER]   (default
benchmarks/results/before_after_2026-12-05: ``ab_{before,now}_N.json`` from the bench, ``ff_*`` from
``fused_forward.py``, ``ep_*`` from ``epoch_time.py``, run in turn before, now, before, now)

Per version and folding on / off: the realized saving of each repeat and each run's median (as the bench prints);
the mean saving without each run's first ``--warm`` steps (the lockstep's rotation makes one run per repeat pay the
process's warm-up, about a second); the excess over the curve of the steps that follow a freeze (each step's time
over the baseline step beside it, less the curve's ``T(k)/T(0)`` at its frozen count: the one-off work of a freeze,
in baseline steps); and the curve's all-frozen ``T(K)/T(0)``. Then the steady-state checks of the other scripts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

FOLDER = Path("benchmarks/results/before_after_2026-12-05")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def row_figures(bench: dict[str, Any], row: dict[str, Any], warm: int) -> dict[str, Any]:
    base = bench["baseline"]["runs_step_seconds"]
    curve = bench["curves"]["fused" if row["fuse"] else "plain"]["step_times"]
    ratio = [c / curve[0] for c in curve]
    frozen = row["step_frozen"]
    first_freeze = next(s for s, k in enumerate(frozen) if k)
    per_repeat = [1 - r / b for r, b in zip(row["runs_seconds"], bench["baseline"]["runs_seconds"], strict=True)]
    trimmed, excess = [], []
    for run, b in zip(row["runs_step_seconds"], base, strict=True):
        trimmed.append(1 - sum(run[warm:]) / sum(b[warm:]))
        after = range(first_freeze, len(run))
        excess.append(statistics.mean(run[s] / b[s] - ratio[frozen[s]] for s in after))
    return {"repeats": per_repeat, "median": row["realized_saving"], "trimmed": trimmed, "excess": excess,
            "all_frozen": ratio[-1]}  # fmt: skip


def print_benches(folder: Path, warm: int) -> None:
    print(f"realized per repeat | run median | without {warm} warm-up steps | excess per step after a freeze "
          "(baseline steps) | T(K)/T(0)")  # fmt: skip
    for version in ("before", "now"):
        for fuse in (True, False):
            rows = []
            for path in sorted(folder.glob(f"ab_{version}_*.json")):
                bench = load(path)
                rows += [row_figures(bench, r, warm) for r in bench["rows"] if r["fuse"] is fuse]
            repeats = " / ".join(f"{100 * s:.1f}" for r in rows for s in r["repeats"])
            medians = " / ".join(f"{100 * r['median']:.1f}" for r in rows)
            cut = [s for r in rows for s in r["trimmed"]]
            trimmed = " / ".join(f"{100 * s:.1f}" for s in cut) + f" (mean {100 * statistics.mean(cut):.1f} %)"
            excesses = [e for r in rows for e in r["excess"]]
            excess = " / ".join(f"{e:.3f}" for e in excesses) + f" (mean {statistics.mean(excesses):.3f})"
            frozen = " / ".join(f"{r['all_frozen']:.2f}" for r in rows)
            print(f"{version:6} folding {'on ' if fuse else 'off'}: {repeats} | {medians} | {trimmed} | "
                  f"{excess} | {frozen}")  # fmt: skip


def print_steady(folder: Path) -> None:
    for version in ("before", "now"):
        steps = " / ".join(f"{load(p)['median_step_s']:.2f}" for p in sorted(folder.glob(f"ep_{version}_*.json")))
        forward, step = [], []
        for path in sorted(folder.glob(f"ff_{version}_*.json")):
            ratio = {(t["kind"], t["variant"]): t["ratio"] for t in load(path)["timings"] if t["threads"] == 2}
            forward.append(f"{ratio['forward', 'fused']:.2f}")
            step.append(f"{ratio['step', 'fused']:.2f}")
        print(f"{version:6} baseline step {steps} s; all-frozen folded forward {' / '.join(forward)}x, "
              f"step {' / '.join(step)}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, nargs="?", default=FOLDER)
    ap.add_argument("--warm", type=int, default=3, help="first steps of each run left out of the trimmed mean")
    args = ap.parse_args()
    print_benches(args.folder, args.warm)
    print_steady(args.folder)


if __name__ == "__main__":
    main()
