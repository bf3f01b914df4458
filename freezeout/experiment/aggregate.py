"""A sweep's results as one table: per strategy and t0, mean and std over seeds, next to the paper's estimate.

Only finished runs count (``summary.json`` that is a JSON object with ``finished: true``); any other run
directory is listed under ``incomplete`` and never enters a mean. Each run is compared with the baseline
(t0 = 1) of the SAME seed:

* ``speedup = 1 - train_seconds / baseline_train_seconds`` (fraction of training time saved; the paper's
  "speedup") and ``time_ratio = train_seconds / baseline_train_seconds``; for runs timed in lockstep, the ratio is
  taken epoch by epoch (``equal_time.time_ratio``);
* ``rel_error = (test_error - baseline_test_error) / baseline_test_error`` (relative increase in error;
  NaN when the baseline made no error, where a relative change means nothing) and
  ``error_increase = test_error - baseline_test_error`` (absolute, always defined).

``std`` is the sample standard deviation (ddof = 1); with a single seed it is undefined: NaN in memory
and in the CSV, ``null`` in the JSON.

The compared number is the data set's metric (``DatasetSpec.metric``): ``test_error``, or ``test_bpb`` (bits per
byte) for a language model; ``rel_error`` and ``error_increase`` are its relative and absolute increase. A sweep
with shortened baselines (``shorter_f=0.7_seed=0``, rows of strategy ``shorter`` with their ``fraction``) also
gives every FreezeOut run its equal-time baseline (``equal_time``: the same seed's shortened-baseline curve at the
run's time ratio) and ``vs_equal_time``, the run's metric minus it (``experiment.equal_time``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .data import get_dataset
from .equal_time import add_equal_time, lockstep_seconds, time_ratio
from .runfiles import atomic_bytes
from .runstate import read_summary
from .sweep import PER_RUN_FIELDS, SHORTER, SWEEP_FILE, run_name, strategy_of

__all__ = ["COLUMNS", "aggregate", "collect_runs", "columns", "mean_std", "metric_of", "write_aggregate"]

log = logging.getLogger(__name__)

COLUMNS = (
    "strategy",
    "schedule",
    "scale_lr",
    "t0",
    "n",
    "seeds",
    "test_error_mean",
    "test_error_std",
    "speedup_mean",
    "speedup_std",
    "time_ratio_mean",
    "time_ratio_std",
    "rel_error_mean",
    "rel_error_std",
    "error_increase_mean",
    "error_increase_std",
    "paper_speedup",
    "fraction",
    "equal_time_mean",
    "equal_time_std",
    "vs_equal_time_mean",
    "vs_equal_time_std",
)
_METRICS = ("speedup", "time_ratio", "rel_error", "error_increase", "equal_time", "vs_equal_time")


def columns(metric: str = "test_error") -> tuple[str, ...]:
    """The CSV's columns for a sweep whose compared number is ``metric`` (``COLUMNS`` for ``test_error``)."""
    return tuple(c.replace("test_error", metric) for c in COLUMNS)


def metric_of(base: dict[str, Any] | None) -> str:
    """The summary key a sweep of base config ``base`` compares: its data set's metric (``test_error`` without one)."""
    try:
        return f"test_{get_dataset((base or {}).get('dataset', 'digits')).metric}"
    except ValueError:  # a data set this version does not know: its error, which every run reports
        return "test_error"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; NaN for one value, both NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def collect_runs(sweep_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per finished run (name, strategy, schedule, scale_lr, t0, seed, fraction, the metric,
    train_seconds) and the names of the run directories that did not finish.

    A summary counts only if it is this directory's: its config names the directory's grid point and has the
    sweep's base config (``sweep.json``, when there is one; a shortened baseline's epochs are that fraction of the
    base's), and its numbers are numbers. Anything else (a summary copied in, left from another config, or
    hand-edited) is listed as incomplete, never averaged.
    """
    sweep_dir = Path(sweep_dir)
    base = _sweep_base(sweep_dir)
    metric = metric_of(base)
    runs, incomplete = [], []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record = _record(run_dir, base, metric)
        if record is not None:
            runs.append(record)
        else:
            incomplete.append(run_dir.name)
    return runs, incomplete


def _record(run_dir: Path, base: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    """``collect_runs``' record of one run folder, or ``None`` if it holds no finished run of this sweep."""
    shortened = base is not None and run_dir.name.startswith(f"{SHORTER}_")
    expected = {k: v for k, v in base.items() if k != "epochs"} if shortened else base
    summary = read_summary(run_dir, expected)
    try:
        c = summary["config"]
        fraction = int(c["epochs"]) / int(base["epochs"]) if shortened else 1.0
        strategy = SHORTER if shortened and float(c["t0"]) == 1.0 else strategy_of(c)
        record = {
            "name": run_dir.name,
            "strategy": strategy,
            "schedule": c["schedule"],
            "scale_lr": bool(c["scale_lr"]),
            "t0": float(c["t0"]),
            "seed": int(c["seed"]),
            "fraction": fraction,
            metric: float(summary[metric]),
            "train_seconds": float(summary["train_seconds"]),
            "epoch_seconds": lockstep_seconds(run_dir),  # for the time ratios, then dropped
        }
        named = run_name(strategy, record["t0"], record["seed"], fraction) == run_dir.name
        ok = named and (fraction < 1 or not shortened)
        ok = ok and all(map(math.isfinite, (record[metric], record["train_seconds"])))
    except (TypeError, KeyError, ValueError, ZeroDivisionError):  # summary None, or fields missing or not numbers
        return None
    return record if ok else None


def _sweep_base(sweep_dir: Path) -> dict[str, Any] | None:
    """The base config of ``sweep.json`` without the per-run fields, or ``None`` (a folder of runs by hand)."""
    try:
        base = json.loads((sweep_dir / SWEEP_FILE).read_text())["base_config"]
        return {k: v for k, v in base.items() if k not in PER_RUN_FIELDS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def aggregate(sweep_dir: str | os.PathLike, paper: bool = True) -> dict[str, Any]:
    """The table of a sweep directory: ``{"rows", "runs", "incomplete", "base_config"}``.

    A run whose seed has no finished baseline has a test error but no speedup or relative error (those
    cells are the mean over the seeds that have one; ``n`` counts all). ``paper=True`` adds the paper's
    FLOP-predicted speedup (Eq. 2-3, no x1.3 correction), which builds the model once (no training).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep directory {sweep_dir} does not exist")
    runs, incomplete = collect_runs(sweep_dir)
    if not runs:
        raise ValueError(f"{sweep_dir} has no finished runs to aggregate")
    if incomplete:
        log.warning("%d unfinished runs left out: %s", len(incomplete), ", ".join(incomplete))
    metric = metric_of(_sweep_base(sweep_dir))
    _compare(runs, metric)
    groups: dict[tuple[str, float, float], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["strategy"], r["t0"], r["fraction"])].append(r)
    base_config = _base_config(sweep_dir, runs)
    predicted = {}
    if paper:
        from .plan import paper_savings

        predicted = paper_savings(base_config, [(g[0]["schedule"], t0) for (_, t0, _), g in groups.items()])
    rows = []
    order = {"baseline": 0, SHORTER: 1}
    for (strategy, t0, fraction), group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0])):
        row: dict[str, Any] = {
            "strategy": strategy,
            "schedule": group[0]["schedule"],
            "scale_lr": group[0]["scale_lr"],
            "t0": t0,
            "n": len(group),
            "seeds": sorted(r["seed"] for r in group),
            "fraction": fraction,
        }
        for m in (metric, *_METRICS):
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std([r[m] for r in group if not math.isnan(r[m])])
        # the FLOP estimate: the paper's for FreezeOut; a shortened baseline does that fraction of the steps
        row["paper_speedup"] = 1 - fraction if strategy == SHORTER else predicted.get((row["schedule"], t0), math.nan)
        rows.append(row)
    return {"rows": rows, "runs": runs, "incomplete": incomplete, "base_config": base_config, "metric": metric}


def _compare(runs: list[dict[str, Any]], metric: str) -> None:
    """Each run against the baseline of its seed (time ratio, speedup, the metric's increase) and against the
    equal-time baseline (``equal_time.add_equal_time``)."""
    baselines = {r["seed"]: r for r in runs if r["strategy"] == "baseline"}
    for r in runs:
        b = baselines.get(r["seed"])
        r["time_ratio"] = time_ratio(r, b) if b is not None else math.nan
        r["speedup"] = 1.0 - r["time_ratio"]
        r["error_increase"] = r[metric] - b[metric] if b is not None else math.nan
        r["rel_error"] = r["error_increase"] / b[metric] if b is not None and b[metric] > 0 else math.nan
    add_equal_time(runs, metric, SHORTER)
    for r in runs:
        r.pop("epoch_seconds", None)


def _base_config(sweep_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / SWEEP_FILE).read_text())["base_config"]
    except (OSError, ValueError, KeyError, TypeError):  # a folder of runs made by hand: any run's config
        return read_summary(sweep_dir / runs[0]["name"])["config"]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None  # JSON has no NaN
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_aggregate(table: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``aggregate.csv`` (the rows), ``aggregate.json`` (everything) and ``aggregate.md`` (the rows as a
    Markdown table, ``tables.markdown_table``) into ``out_dir``, atomically; returns the first two paths."""
    from .tables import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(table.get("metric", "test_error")), lineterminator="\n")
    writer.writeheader()
    for row in table["rows"]:
        writer.writerow({**row, "seeds": " ".join(map(str, row["seeds"]))})
    csv_path, json_path = out / "aggregate.csv", out / "aggregate.json"
    atomic_bytes(csv_path, text.getvalue().encode())
    atomic_bytes(json_path, (json.dumps(_json_safe(table), indent=2, sort_keys=True) + "\n").encode())
    atomic_bytes(out / "aggregate.md", markdown_table(table).encode())
    return csv_path, json_path
