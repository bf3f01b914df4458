"""What the same training time buys without FreezeOut: the equal-time baseline of a FreezeOut run.

A user who wants a run ``r`` times as long as the baseline has a simpler choice than FreezeOut: train the baseline
for ``r`` of its steps, its own cosine schedule over the fewer steps. A sweep with ``shorter`` fractions trains that
baseline for a few fractions ``f`` of the epochs per seed (``shorter_f=0.7_seed=0``); with the full baseline
(``f = 1``) they make a curve of the metric against ``f``, per seed. A shortened baseline does exactly ``f`` of
the baseline's steps, each the same work, so its time is ``f`` of the baseline's: the curve's x is ``f`` itself,
exact, while its measured time ratio (in the table beside it) only adds the timing's noise.

The equal-time baseline of a FreezeOut run is that curve of the SAME seed read at the run's measured time ratio
(``train_seconds / baseline train_seconds``), linearly between the two fractions around it; outside the curve
(a run that took less time than the shortest baseline, or more than the full one) it is NaN, never extrapolated.
``vs_equal_time`` is the run's metric minus that value: below zero, FreezeOut did better than training shorter.

A time ratio of two runs trained in lockstep (``experiment.lockstep``) is taken epoch by epoch (``time_ratio``):
the mean over the baseline's epochs of the run's seconds in that epoch over the baseline's, in the same rounds (an
epoch the run did not train counts 0). A machine whose speed drifts from epoch to epoch then weighs no epoch more
than another, and a shortened baseline, absent from the later epochs' rounds, measures its fraction.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .recover import read_jsonl
from .runfiles import METRICS

__all__ = ["add_equal_time", "interpolate", "lockstep_seconds", "time_ratio"]


def interpolate(curve: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear function through ``curve``'s points ``(x_k, y_k)`` at ``x``; NaN outside
    ``[min x_k, max x_k]``, for fewer than two points, or for a NaN ``x``."""
    points = sorted(curve)
    if len(points) < 2 or math.isnan(x) or not points[0][0] <= x <= points[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return math.nan  # not reached: x lies within the points


def add_equal_time(runs: list[dict[str, Any]], metric: str, shorter: str = "shorter") -> None:
    """Set ``equal_time`` and ``vs_equal_time`` on every run of ``runs`` (records with ``strategy``, ``seed``,
    ``fraction``, ``time_ratio`` and ``metric``): NaN for the baselines themselves and where no curve covers it."""
    curves: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        if r["strategy"] in ("baseline", shorter):
            curves[r["seed"]].append((1.0 if r["strategy"] == "baseline" else r["fraction"], r[metric]))
    for r in runs:
        if r["strategy"] in ("baseline", shorter):
            r["equal_time"] = r["vs_equal_time"] = math.nan
            continue
        has_full = any(x == 1.0 for x, _ in curves.get(r["seed"], []))  # a curve needs its seed's baseline
        r["equal_time"] = interpolate(curves[r["seed"]], r["time_ratio"]) if has_full else math.nan
        r["vs_equal_time"] = r[metric] - r["equal_time"]


def lockstep_seconds(run_dir: str | Path) -> list[float] | None:
    """The training seconds of each epoch of the run in ``run_dir``, in order, if every epoch was timed in lockstep
    (``metrics.jsonl``'s ``"lockstep": true``); ``None`` otherwise."""
    records, _ = read_jsonl(Path(run_dir) / METRICS)
    if not records or any(r.get("lockstep") is not True for r in records):
        return None
    if [r.get("epoch") for r in records] != list(range(1, len(records) + 1)):
        return None
    seconds = [r.get("epoch_seconds") for r in records]
    return seconds if all(isinstance(x, (int, float)) and x > 0 for x in seconds) else None


def time_ratio(run: dict[str, Any], baseline: dict[str, Any]) -> float:
    """``run``'s training time over ``baseline``'s: epoch by epoch (see the module doc) where both have every epoch
    timed in lockstep (``epoch_seconds``) and the run no more epochs, else their total ``train_seconds``."""
    mine, theirs = run.get("epoch_seconds"), baseline.get("epoch_seconds")
    if mine and theirs and len(mine) <= len(theirs):
        return sum(a / b for a, b in zip(mine, theirs)) / len(theirs)
    return run["train_seconds"] / baseline["train_seconds"] if baseline["train_seconds"] > 0 else math.nan
