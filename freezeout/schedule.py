"""FreezeOut's schedule as pure functions of explicit time (SPEC §1).

Nothing here holds state or needs torch: progress is always ``t = step / total_steps`` and every
function is given it (or ``step`` and ``total_steps``) explicitly, so a plot, an estimate and the
training controller all read the very same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "SCHEDULES",
    "freeze_times",
    "layer_lr",
    "learning_rates",
    "num_frozen_at",
    "progress",
    "validate_schedule",
    "validate_t0",
    "validate_total_steps",
]

SCHEDULES = ("linear", "cubic")


def validate_t0(t0: float) -> float:
    """Return ``t0`` as a float if it lies in (0, 1]; raise ``ValueError`` naming it otherwise."""
    try:
        value = float(t0)
    except (TypeError, ValueError):
        raise ValueError(f"t0 must be a number in (0, 1], got {t0!r}") from None
    # `not (0 < v <= 1)` is also true for NaN, which a plain range check would let through.
    if not (0.0 < value <= 1.0):
        raise ValueError(f"t0 must be in (0, 1] (1 = no freezing), got {t0!r}")
    return value


def validate_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
    return schedule


def validate_total_steps(total_steps: int) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1 (optimizer steps, not epochs), got {total_steps!r}")
    return total_steps


def freeze_times(n: int, t0: float, schedule: str = "cubic") -> list[float]:
    """Freeze time ``t_i`` of each of ``n`` layers as a fraction of training, input side first.

    ``t0`` is given before cubing: ``freeze_times(n, 0.8, "cubic")[0] == 0.8 ** 3``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of freezable layers) must be an integer >= 1, got {n!r}")
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
