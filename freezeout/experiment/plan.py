"""What a sweep will cost and save, before running it: the paper's FLOP estimate per point and a
calibrated time estimate from the step-time curve of the sweep's own model on this hardware.

The model is built from the base config and fed random batches of its data set's shape (the registries');
the number of steps per epoch is read from the data set itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.cost import integrate_step_times, paper_saving
from ..analysis.flops import layer_flops
from ..analysis.timing import default_ks, step_time_curve
from ..checks import resolve_device
from ..schedule import freeze_times
from .data import get_dataset, load_dataset
from .models import build_example
from .runstate import run_status
from .sweep import Grid, base_dict, check_shorter, expand, prepare_sweep_dir, run_config

__all__ = ["calibrated_plan", "dry_run", "example_model", "paper_savings", "steps_per_epoch"]

# Step-time samples: enough points for the curve's shape (it is close to linear between them) while
# keeping a dry run of DenseNet-BC-76 on a CPU to a minute or so.
CURVE_POINTS = 9


def example_model(base: dict[str, Any], batch: int | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The base config's model, a random input batch (in the layout the runs train in) and labels of its
    data set's shape."""
    data = get_dataset(base.get("dataset"))
    n = batch or base["batch_size"]
    # configs older than the channels_last key trained in NCHW
    model, x = build_example(base.get("model", "densenet-bc"), base.get("depth"), base.get("growth"),
                             data.num_classes, data.shape, n, bool(base.get("channels_last", False)))  # fmt: skip
    # labels per example, or per position of a token sequence (a language model predicts every next token)
    shape = tuple(x.shape) if not x.is_floating_point() else (n,)
    y = torch.randint(0, data.num_classes, shape, generator=torch.Generator().manual_seed(0))
    return model, x, y


def steps_per_epoch(base: dict[str, Any]) -> int:
    """Batches per epoch as the trainer counts them (the last partial batch is a step too), from the data."""
    data = load_dataset(base["dataset"], base.get("data_dir"), int(base.get("val_split", 0)))
    return -(-data.num_train // base["batch_size"])


def paper_savings(base: dict[str, Any], points: Iterable[tuple[str, float]]) -> dict[tuple[str, float], float]:
    """The paper's predicted saving for each ``(schedule, t0)``, counting the model's FLOPs once.

    Without the authors' x1.3 correction for the linear schedule: that is an empirical fudge of theirs.
    """
    model, x, _ = example_model(base, batch=1)
    flops, rest = layer_flops(model, model.layers, x)
    return {(s, t0): paper_saving(flops, rest, freeze_times(len(flops), t0, s)) for s, t0 in set(points)}


def calibrated_plan(base: dict[str, Any], points: Iterable[tuple[str, float]], repeats: int = 1) -> dict[str, Any]:
    """Measured step times ``T(k)`` of the base config's model (``k`` layers frozen) and, per
    ``(schedule, t0)``, the saving they predict over the run's real number of steps.

    Returns ``step_times``, ``seconds_per_baseline_epoch`` (``T(0)`` x steps per epoch, no data loading)
    and ``savings``.
    """
    per_epoch = steps_per_epoch(base)
    model, x, y = example_model(base)
    curve = step_time_curve(
        model,
        model.layers,
        x,
        target=y,
        ks=default_ks(len(model.layers), CURVE_POINTS),
        repeats=repeats,
        warmup=1,
        device=resolve_device(str(base.get("device", "auto"))),
        fuse=bool(base.get("fuse", True)),
    )
    step_times, n = curve["step_times"], len(model.layers)
    total = int(base["epochs"]) * per_epoch
    savings = {
        (s, t0): integrate_step_times(step_times, freeze_times(n, t0, s), total)["saving"] for s, t0 in set(points)
    }
    return {"step_times": step_times, "seconds_per_baseline_epoch": step_times[0] * per_epoch, "savings": savings}


def dry_run(
    base_config: Any, grid: Grid, sweep_dir: str | os.PathLike | None = None, *, timing_steps: int = 0
) -> dict[str, Any]:
    """The grid, each run's status in ``sweep_dir`` and what is left to run.

    With ``timing_steps > 0`` also an estimated time, from the calibrated estimator: the step time of the
    sweep's model with ``k`` layers frozen, measured ``timing_steps`` times per sampled ``k`` on random data
    (``calibrated_plan``), integrated over each remaining run's schedule. Without
    it, only the number of runs and epochs: nothing better is known without running the model.
    """
    specs = expand(grid)
    base = base_dict(base_config)
    if sweep_dir is not None:
        prepare_sweep_dir(base_config, grid, sweep_dir, write=False)  # the statuses would mean nothing otherwise
    epochs = int(base.get("epochs", 0))
    check_shorter(base, grid)
    rows = []
    for spec in specs:
        expected = run_config(base, spec)
        status = run_status(Path(sweep_dir) / spec.name, expected) if sweep_dir is not None else "new"
        rows.append({"name": spec.name, "status": status, "epochs": int(expected.get("epochs", 0))})
    todo = [spec for spec, row in zip(specs, rows) if row["status"] != "finished"]
    out: dict[str, Any] = {
        "runs": rows,
        "num_runs": len(rows),
        "num_to_run": len(todo),
        "epochs_to_run": sum(row["epochs"] for row in rows if row["status"] != "finished"),
        "estimate": None,
    }
    if timing_steps > 0 and todo:
        plan = calibrated_plan(base, [(s.schedule, s.t0) for s in todo], repeats=timing_steps)
        per_epoch = plan["seconds_per_baseline_epoch"]
        fractions = [1.0 - plan["savings"][(s.schedule, s.t0)] if not s.baseline else s.fraction for s in todo]
        out["estimate"] = {
            "seconds": per_epoch * epochs * sum(fractions),
            "seconds_per_baseline_epoch": per_epoch,
            "step_times": plan["step_times"],
            "method": f"step time with k layers frozen, median of {timing_steps} per k, integrated over each schedule",
        }
    return out
