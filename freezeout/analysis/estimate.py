"""How much FreezeOut will save, before training: the paper's FLOP estimate and a calibrated one.

The paper (Eq. 2-3, docs/METHOD.md "The cost model") counts a layer's step as forward + backward = ``2 c_i``
and a frozen one as ``c_i``. That ignores that backward often costs more than twice the forward and that early,
high-resolution layers cost more time than their FLOPs say, so we also offer a *calibrated* estimate: the
measured step time ``T(k)`` with the first ``k`` layers frozen (``freezeout.analysis.timing``), integrated over
the schedule (``freezeout.analysis.cost``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..layers import LayerLike
from ..options import FreezeOutOptions
from ..schedule import freeze_times, validate_schedule, validate_t0
from .cost import LINEAR_CORRECTION, integrate_step_times, paper_saving, zero_cost_saving
from .flops import batch_size_of, layer_flops
from .timing import step_time_curve

__all__ = ["estimate_saving", "predict"]

_DEFAULT = FreezeOutOptions()  # the strategy FreezeOut runs by default is the one estimated by default


def predict(
    flops: Sequence[float],
    rest_flops: float,
    t0: float = _DEFAULT.t0,
    schedule: str = _DEFAULT.schedule,
    scale_lr: bool = _DEFAULT.scale_lr,
    *,
    linear_correction: bool = False,
    step_times: Sequence[float] | None = None,
    total_steps: int | None = None,
) -> dict[str, Any]:
    """Both estimates for one strategy from measured per-layer FLOPs and (optionally) step times.

    ``scale_lr`` does not change freeze times, hence neither estimate; it is kept to label the row.
    ``total_steps=None`` integrates the step-time curve in the continuous limit.
    """
    t0 = validate_t0(t0)
    validate_schedule(schedule)
    times = freeze_times(len(flops), t0, schedule)
    correction = LINEAR_CORRECTION if linear_correction and schedule == "linear" else 1.0
    row: dict[str, Any] = {
        "schedule": schedule,
        "scale_lr": bool(scale_lr),
        "t0": t0,
        "paper_saving": paper_saving(flops, rest_flops, times),
        "paper_correction": correction,
        "paper_saving_corrected": paper_saving(flops, rest_flops, times, correction),
        "zero_cost_saving": zero_cost_saving(flops, rest_flops, times),  # frozen layers free: the cache's bound
    }
    if step_times is not None:
        row["calibrated_saving"] = integrate_step_times(step_times, times, total_steps)["saving"]
    return row


def estimate_saving(
    model: nn.Module,
    layers: Sequence[LayerLike],
    example_input: Any,
    t0: float = _DEFAULT.t0,
    schedule: str = _DEFAULT.schedule,
    scale_lr: bool = _DEFAULT.scale_lr,
    *,
    linear_correction: bool = False,
    calibrate: bool = False,
    total_steps: int | None = None,
    **timing_options: Any,
) -> dict[str, Any]:
    """Predicted wall-clock saving of FreezeOut for ``model`` with freezable ``layers`` on ``example_input``.

    Always the paper's FLOP estimate (``paper_saving``; ``paper_saving_corrected`` applies the authors'
    x1.3 for the linear schedule when ``linear_correction``); with ``calibrate=True`` also
    ``calibrated_saving`` from the step-time curve measured on this hardware (``timing_options`` go to
    ``freezeout.analysis.timing.step_time_curve``: ``target``, ``loss_fn``, ``repeats``, ``ks``, ``device``, ...)
    and the saved-for-backward bytes it measured (``saved_bytes``, ``saved_bytes_by_k``). The model itself is not
    changed: the curve is measured on a copy.

    ``example_input`` is a tensor (``model(x)``), a tuple (``model(*x)``) or a mapping, such as a tokenizer's
    ``BatchEncoding`` (``model(**x)``); its first tensor's first dimension is the batch. For a model whose output
    is not plain logits the default loss is ``model_loss``: the model's own ``loss`` if it computes one (put
    ``labels`` in the example), else cross-entropy of its ``logits`` (or first tensor) on random labels; or pass
    ``loss_fn(output, target)``.
    """
    validate_t0(t0)
    validate_schedule(schedule)
    flops, rest = layer_flops(model, layers, example_input)
    step_times = None
    out: dict[str, Any] = {"num_layers": len(flops), "batch_size": batch_size_of(example_input)}
    if calibrate:
        curve = step_time_curve(model, layers, example_input, **timing_options)
        step_times = curve["step_times"]
        out.update(step_times=step_times, saved_bytes=curve["saved_bytes"], saved_bytes_by_k=curve["saved_bytes_by_k"])
    out.update(layer_flops=flops, rest_flops=rest)
    out.update(
        predict(
            flops,
            rest,
            t0,
            schedule,
            scale_lr,
            linear_correction=linear_correction,
            step_times=step_times,
            total_steps=total_steps,
        )
    )
    return out
