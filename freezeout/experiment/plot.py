"""The paper's Figures 1 and 2 as PNGs: data built by pure functions, drawn by matplotlib (the plot extra).

Figure 1: each layer's learning rate over training for a 5-layer network at t0 = 0.5, one panel per
strategy, straight from ``freezeout.learning_rates`` (no training). Figure 2: the speedup vs. test error
trade-off of a sweep, from its aggregate table (its files; nothing is retrained).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from ..schedule import STRATEGIES, freeze_times, learning_rates
from .runfiles import atomic_bytes

__all__ = ["figure1_data", "figure2_data", "plot_figure1", "plot_figure2"]


def figure1_data(
    n_layers: int = 5, t0: float = 0.5, base_lr: float = 0.1, points: int = 401
) -> dict[str, dict[str, Any]]:
    """Per strategy: progress ``t`` (``points`` values over [0, 1]), each layer's freeze time and LR curve,
    and the curve of the rest (the head, never frozen)."""
    data = {}
    for strategy, (schedule, scale) in STRATEGIES.items():
        times = freeze_times(n_layers, t0, schedule)
        steps = points - 1
        curves = [learning_rates(s, steps, times, [base_lr] * (n_layers + 1), scale) for s in range(points)]
        data[strategy] = {
            "t": [s / steps for s in range(points)],
            "times": times,
            "layers": [[c[i] for c in curves] for i in range(n_layers)],
            "rest": [c[-1] for c in curves],
        }
    return data


def figure2_data(table: dict[str, Any]) -> dict[str, Any]:
    """From an aggregate table: the baseline's metric, per strategy points in order of speedup, and the equal-time
    curve (the shortened baselines, at the time they save: ``1 - fraction``, exact; see ``experiment.equal_time``).

    Times in percent; the metric in percent for an error, as it is for bits per byte (``"metric"`` says which). A
    NaN std (one seed) becomes 0: no spread is known, none is drawn.
    """
    metric = table.get("metric", "test_error")
    scale = 100.0 if metric.endswith("error") else 1.0

    def pct(x: float, by: float = 100.0) -> float:
        return 0.0 if x is None or math.isnan(x) else by * x

    base = [r for r in table["rows"] if r["strategy"] == "baseline"]
    out: dict[str, Any] = {"metric": metric, "baseline": None, "strategies": {}, "shorter": None}
    if base:
        out["baseline"] = {
            "error": pct(base[0][f"{metric}_mean"], scale),
            "error_std": pct(base[0][f"{metric}_std"], scale),
        }
    short = sorted((r for r in table["rows"] if r["strategy"] == "shorter"), key=lambda r: -r["fraction"])
    if short and base:
        points = [(0.0, out["baseline"]["error"], out["baseline"]["error_std"])]
        points += [
            (pct(1 - r["fraction"]), pct(r[f"{metric}_mean"], scale), pct(r[f"{metric}_std"], scale)) for r in short
        ]
        out["shorter"] = {
            "speedup": [p[0] for p in points],
            "error": [p[1] for p in points],
            "error_std": [p[2] for p in points],
        }
    for strategy in STRATEGIES:
        rows = [r for r in table["rows"] if r["strategy"] == strategy and not _nan(r["speedup_mean"])]
        rows.sort(key=lambda r: r["speedup_mean"])
        if rows:
            out["strategies"][strategy] = {
                key: [pct(r[f"{m}_{stat}"], scale if m == metric else 100.0) for r in rows]
                for key, m, stat in (
                    ("speedup", "speedup", "mean"),
                    ("speedup_std", "speedup", "std"),
                    ("error", metric, "mean"),
                    ("error_std", metric, "std"),
                    ("paper_speedup", "paper", "speedup"),
                )
            } | {"t0": [r["t0"] for r in rows], "n": [r["n"] for r in rows]}
    return out


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_bytes(path, buf.getvalue())
    return path


def plot_figure1(path: str | os.PathLike, data: dict[str, dict[str, Any]] | None = None) -> Path:
    """Figure 1 as a PNG at ``path`` (written atomically); returns the path."""
    from matplotlib.figure import Figure  # Agg canvas, no global backend or pyplot state

    data = data or figure1_data()
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    titles = {"linear": "linear", "cubic": "cubic"}
    for ax, (strategy, (schedule, scale)) in zip(axes.T.flat, STRATEGIES.items()):
        d = data[strategy]
        for i, (curve, t_i) in enumerate(zip(d["layers"], d["times"])):
            ax.plot(d["t"], curve, label=f"layer {i + 1} (t$_{i + 1}$={t_i:.2f})")
        ax.plot(d["t"], d["rest"], "k--", lw=1, label="rest (head)")
        ax.set_title(f"{titles[schedule]}, {'scaled' if scale else 'unscaled'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("training progress t")
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate")
    fig.suptitle("FreezeOut per-layer learning rates, 5 layers, t$_0$ = 0.5 (base LR 0.1)")
    return _save(fig, path)


def plot_figure2(path: str | os.PathLike, table: dict[str, Any], title: str = "") -> Path:
    """Figure 2 as a PNG at ``path``: speedup (x) vs. the metric (y), mean ±1 std over seeds per strategy, and the
    equal-time baselines (the baseline trained shorter) on the same axes where the sweep has them."""
    from matplotlib.figure import Figure

    data = figure2_data(table)
    if not data["strategies"]:
        raise ValueError("the table has no FreezeOut run with a finished baseline of its seed: nothing to plot")
    bits = not data["metric"].endswith("error")
    unit = " bits per byte" if bits else " %"
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    if data["baseline"]:
        b = data["baseline"]
        ax.axhline(
            b["error"], color="k", ls="--", lw=1, label=f"baseline (t$_0$ = 1): {b['error']:.{3 if bits else 2}f}{unit}"
        )
        ax.axhspan(b["error"] - b["error_std"], b["error"] + b["error_std"], color="k", alpha=0.08)
        ax.axvline(0, color="k", lw=0.5)
    if data["shorter"]:
        d = data["shorter"]
        ax.plot(d["speedup"], d["error"], "s-", color="k", label="baseline trained shorter (equal time)")
        lo = [e - s for e, s in zip(d["error"], d["error_std"])]
        ax.fill_between(d["speedup"], lo, [e + s for e, s in zip(d["error"], d["error_std"])], color="k", alpha=0.12)
    for strategy, d in data["strategies"].items():
        (line,) = ax.plot(d["speedup"], d["error"], "o-", label=strategy)
        lo = [e - s for e, s in zip(d["error"], d["error_std"])]
        hi = [e + s for e, s in zip(d["error"], d["error_std"])]
        ax.fill_between(d["speedup"], lo, hi, color=line.get_color(), alpha=0.15)
        ax.errorbar(d["speedup"], d["error"], xerr=d["speedup_std"], fmt="none", ecolor=line.get_color(), alpha=0.5)
        for x, y, t0 in zip(d["speedup"], d["error"], d["t0"]):
            ax.annotate(f"{t0:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("wall-clock speedup vs. same-seed baseline (% of training time saved)")
    ax.set_ylabel("bits per byte on held-out text" if bits else "test error (%)")
    what = "bits per byte" if bits else "test error"
    ax.set_title(title or f"FreezeOut: speedup vs. {what} (mean ±1 std over seeds; labels: t$_0$)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
