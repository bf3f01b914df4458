"""What a sweep will cost and save, before running it: the paper's FLOP estimate per point and a
calibrated time estimate from the step-time curve of the sweep's own model on this hardware.

Only shapes are needed, no data: the model is built from the base config and fed random batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .estimate import integrate_step_times, layer_flops, paper_saving
from .schedule import freeze_times

__all__ = ["DATA_SHAPES", "calibrated_plan", "example_model", "paper_savings", "steps_per_epoch"]

# (channels, height, width, classes, training images) of each dataset the trainer knows; enough to build
# the model and to count steps without loading any data.
DATA_SHAPES = {
    "digits": (1, 8, 8, 10, 1497),
    "cifar10": (3, 32, 32, 10, 50000),
    "cifar100": (3, 32, 32, 100, 50000),
}
# Step-time samples: enough points for the curve's shape (it is close to linear between them) while
# keeping a dry run of DenseNet-BC-76 on a CPU to a minute or so.
CURVE_POINTS = 9


def example_model(base: dict[str, Any], batch: int | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The base config's model, a random input batch and labels of its dataset's shape."""
    from .models import build_model

    if base.get("dataset") not in DATA_SHAPES:
        raise ValueError(f"dataset must be one of {', '.join(DATA_SHAPES)}, got {base.get('dataset')!r}")
    c, h, w, classes, _ = DATA_SHAPES[base["dataset"]]
    model = build_model(base.get("model", "densenet-bc"), base["depth"], base["growth"], classes, c)
    n = batch or base["batch_size"]
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(n, c, h, w, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def steps_per_epoch(base: dict[str, Any]) -> int:
    """Batches per epoch as the trainer counts them (the last partial batch is a step too)."""
    train_images = DATA_SHAPES[base["dataset"]][4] - int(base.get("val_split", 0))
    return -(-train_images // base["batch_size"])


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
    from .timing import default_ks, step_time_curve, to_channels_last
    from .trainer import resolve_device

    model, x, y = example_model(base)
    if base.get("channels_last", False):  # time the layout the runs train in (configs older than the key: NCHW)
        x = to_channels_last(model, x)
    curve = step_time_curve(
        model,
        model.layers,
        x,
        target=y,
        ks=default_ks(len(model.layers), CURVE_POINTS),
        repeats=repeats,
        warmup=1,
        device=resolve_device(str(base.get("device", "auto"))),
    )
    step_times, n = curve["step_times"], len(model.layers)
    total = int(base["epochs"]) * steps_per_epoch(base)
    savings = {
        (s, t0): integrate_step_times(step_times, freeze_times(n, t0, s), total)["saving"] for s, t0 in set(points)
    }
    return {
        "step_times": step_times,
        "seconds_per_baseline_epoch": step_times[0] * steps_per_epoch(base),
        "savings": savings,
    }
