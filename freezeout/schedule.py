"""FreezeOut's schedule as pure functions of explicit time (docs/METHOD.md, "The schedule").

Nothing here holds state or needs torch: progress is always ``t = step / total_steps`` and every
function is given it (or ``step`` and ``total_steps``) explicitly, so a plot, an estimate and the
training controller all read the very same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .checks import check_int, check_number

__all__ = [
    "SCHEDULES",
    "STRATEGIES",
    "freeze_times",
    "layer_lr",
    "learning_rates",
    "num_frozen_at",
    "parse_strategy",
    "progress",
    "strategy_name",
    "validate_schedule",
    "validate_t0",
    "validate_total_steps",
]

SCHEDULES = ("linear", "cubic")
# The paper's four strategies, in its Figure 1 order: name -> (schedule, scale_lr). The one list that the
# sweep, the benchmark, the estimate and the plots iterate over.
STRATEGIES: dict[str, tuple[str, bool]] = {
    "linear-unscaled": ("linear", False),
    "linear-scaled": ("linear", True),
    "cubic-unscaled": ("cubic", False),
    "cubic-scaled": ("cubic", True),
}


def strategy_name(schedule: str, scale_lr: bool) -> str:
    """``("cubic", True)`` -> ``"cubic-scaled"``."""
    return f"{validate_schedule(schedule)}-{'scaled' if scale_lr else 'unscaled'}"


def parse_strategy(name: str) -> tuple[str, bool]:
    """``"cubic-scaled"`` -> ``("cubic", True)``; ``ValueError`` naming the allowed names otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def validate_t0(t0: float, *, allow_one: bool = True) -> float:
    """Return ``t0`` as a float if it lies in (0, 1] ((0, 1) without ``allow_one``); ``ValueError`` otherwise."""
    if allow_one:
        return check_number("t0", t0, 0.0, 1.0, low_open=True, what="1 = no freezing")
    return check_number("t0", t0, 0.0, 1.0, low_open=True, high_open=True, what="t0 = 1 is the baseline")


def validate_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
    return schedule


def validate_total_steps(total_steps: int) -> int:
    return check_int("total_steps", total_steps, 1, what="optimizer steps, not epochs")


def freeze_times(n: int, t0: float, schedule: str = "cubic") -> list[float]:
    """Freeze time ``t_i`` of each of ``n`` layers as a fraction of training, input side first.

    ``t0`` is given before cubing: ``freeze_times(n, 0.8, "cubic")[0] == 0.8 ** 3``.
    """
    n = check_int("n", n, 1, what="number of freezable layers")
    t0 = validate_t0(t0)
    validate_schedule(schedule)
    linear = [t0 + (1.0 - t0) * i / n for i in range(n)]
    if schedule == "linear":
        return linear
    return [t**3 for t in linear]


def progress(step: int, total_steps: int) -> float:
    """Training progress ``t`` in [0, 1]; steps past the end count as the end."""
    return min(max(step, 0) / total_steps, 1.0)


def layer_lr(t: float, t_i: float, base_lr: float, scale_lr: bool = True) -> float:
    """Learning rate at progress ``t`` of a layer that freezes at ``t_i``.

    ``0.5 * lr0 * (1 + cos(pi t / t_i))`` before ``t_i`` and 0 from then on, with ``lr0 = base_lr / t_i``
    when scaled (every layer's curve then has the same area, ``base_lr / 2``) and ``base_lr`` when not.
    The paper's Eq. 1 omits the 1/2; its authors' code has it.
    """
    if t >= t_i:
        return 0.0
    lr0 = base_lr / t_i if scale_lr else base_lr
    return 0.5 * lr0 * (1.0 + math.cos(math.pi * t / t_i))


def learning_rates(
    step: int, total_steps: int, times: Sequence[float], base_lrs: Sequence[float], scale_lr: bool = True
) -> list[float]:
    """LR of every layer and then of the rest (the head, ``t_i = 1``, never scaled) at ``step``.

    ``base_lrs`` has one entry per layer plus one for the rest.
    """
    if len(base_lrs) != len(times) + 1:
        raise ValueError(f"base_lrs needs {len(times) + 1} entries (one per layer, then the rest), got {len(base_lrs)}")
    t = progress(step, total_steps)
    lrs = [layer_lr(t, t_i, lr, scale_lr) for t_i, lr in zip(times, base_lrs)]
    lrs.append(layer_lr(t, 1.0, base_lrs[-1], scale_lr=False))
    return lrs


def num_frozen_at(step: int, total_steps: int, times: Sequence[float]) -> int:
    """How many layers are frozen at ``step``: those with ``t >= t_i``.

    ``t0 = 1`` (first ``t_i`` = 1) is plain cosine annealing and nothing ever freezes; for any ``t0 < 1``
    all layers are frozen at the end, even where rounding makes a late ``t_i`` come out as exactly 1.
    """
    if not times or times[0] >= 1.0:
        return 0
    t = progress(step, total_steps)
    count = 0
    for t_i in times:  # increasing, so the frozen layers are a prefix
        if t < t_i:
            break
        count += 1
    return count
