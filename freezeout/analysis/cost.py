"""FreezeOut's cost model as pure functions: the paper's FLOP estimate (Eq. 2-3) and a measured step-time curve
integrated over a schedule (docs/METHOD.md, "The cost model"). No torch, no measuring: the numbers go in."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..schedule import num_frozen_at, validate_total_steps

__all__ = [
    "LINEAR_CORRECTION",
    "integrate_on_baseline",
    "integrate_step_times",
    "interpolate_step_times",
    "paper_saving",
    "steps_per_frozen_count",
]

# The paper's authors multiply their linear-schedule estimate by 1.3, an empirical correction they
# report (not derived); offered as an option and labelled as theirs.
LINEAR_CORRECTION = 1.3


def paper_saving(flops: Sequence[float], rest_flops: float, times: Sequence[float], correction: float = 1.0) -> float:
    """Predicted saving ``1 - C_f / C`` of the paper's Eq. 2-3, times ``correction``.

    ``C = sum 2 c_i`` (forward + backward of every layer and the rest), ``C_f = sum (1 + t_i) c_i`` with
    the rest at ``t = 1``. A ``t_i >= 1`` (a layer that never freezes) counts as 1.
    """
    if len(flops) != len(times):
        raise ValueError(f"flops and times must have the same length, got {len(flops)} and {len(times)}")
    full = 2.0 * (sum(flops) + rest_flops)
    if full <= 0:
        raise ValueError("the model has no counted FLOPs: cannot estimate a saving")
    frozen = sum((1.0 + min(t, 1.0)) * c for c, t in zip(flops, times)) + 2.0 * rest_flops
    return correction * (1.0 - frozen / full)


def zero_cost_saving(flops: Sequence[float], rest_flops: float, times: Sequence[float]) -> float:
    """The saving if a frozen layer cost nothing (``PrefixCache`` serving every example): in the paper's FLOP
    model ``1 - C_0 / C`` with ``C_0 = sum 2 t_i c_i`` and the rest at ``t = 1``, the bound a cache can reach."""
    if len(flops) != len(times):
        raise ValueError(f"flops and times must have the same length, got {len(flops)} and {len(times)}")
    full = 2.0 * (sum(flops) + rest_flops)
    if full <= 0:
        raise ValueError("the model has no counted FLOPs: cannot estimate a saving")
    return 1.0 - (sum(2.0 * min(t, 1.0) * c for c, t in zip(flops, times)) + 2.0 * rest_flops) / full


def steps_per_frozen_count(times: Sequence[float], total_steps: int | None = None) -> list[float]:
    """How much of the run has exactly ``k`` layers frozen, ``k = 0 .. n``.

    With ``total_steps`` S: the number of steps (batches ``s = 0 .. S-1``, batch ``s`` running with
    ``num_frozen_at(s, S, times)`` frozen, as under ``FreezeOut``). With ``None``: the fraction of
    training in the continuous limit, ``t_k - t_{k-1}``.
    """
    n = len(times)
    if total_steps is None:
        bounds = [0.0, *(min(t, 1.0) for t in times), 1.0]
        return [bounds[k + 1] - bounds[k] for k in range(n + 1)]
    total_steps = validate_total_steps(total_steps)
    # first[k]: first batch with >= k frozen. Found from ceil(t*S) and nudged so it agrees exactly with
    # num_frozen_at's float comparisons; O(n) instead of a loop over every step.
    first = [0]
    for k in range(1, n + 1):
        t = times[k - 1]
        if t >= 1.0:
            first.append(total_steps)
            continue
        s = min(max(math.ceil(t * total_steps), first[-1]), total_steps)
        while s > first[-1] and num_frozen_at(s - 1, total_steps, times) >= k:
            s -= 1
        while s < total_steps and num_frozen_at(s, total_steps, times) < k:
            s += 1
        first.append(s)
    first.append(total_steps)
    return [float(first[k + 1] - first[k]) for k in range(n + 1)]


def integrate_step_times(
    step_times: Sequence[float], times: Sequence[float], total_steps: int | None = None
) -> dict[str, float]:
    """Expected run time when batch ``s`` costs ``step_times[num_frozen_at(s)]``, vs. the baseline.

    ``step_times[k]`` is the step time with the first ``k`` layers frozen (``n + 1`` values). With
    ``total_steps=None`` the result is per unit of training (a run of one step's length). Returns
    ``{"time", "baseline", "saving"}`` with baseline ``S * step_times[0]``.
    """
    if len(step_times) != len(times) + 1:
        raise ValueError(f"step_times needs {len(times) + 1} entries (k = 0 .. n frozen), got {len(step_times)}")
    weights = steps_per_frozen_count(times, total_steps)
    time = sum(w * s for w, s in zip(weights, step_times))
    baseline = (1.0 if total_steps is None else total_steps) * step_times[0]
    return {"time": time, "baseline": baseline, "saving": 1.0 - time / baseline}


def integrate_on_baseline(
    step_times: Sequence[float], frozen_per_step: Sequence[int], baseline_seconds: Sequence[float]
) -> dict[str, float]:
    """``integrate_step_times`` on a machine whose speed drifts: the run's step ``s``, with ``frozen_per_step[s]``
    layers frozen, costs ``T(k) / T(0)`` times ``baseline_seconds[s]``, the unfrozen step timed beside it (in
    lockstep). A flat baseline gives ``integrate_step_times``' saving; a drifting one weighs each step by the speed
    the run saw then, as its realized saving does. Returns ``{"time", "baseline", "saving"}``."""
    if len(frozen_per_step) != len(baseline_seconds):
        raise ValueError(
            f"frozen_per_step and baseline_seconds must have one entry per step, got {len(frozen_per_step)} and "
            f"{len(baseline_seconds)}"
        )
    if any(not 0 <= k < len(step_times) for k in frozen_per_step):
        raise ValueError(f"frozen_per_step must lie in 0 .. {len(step_times) - 1}, got {list(frozen_per_step)}")
    baseline = float(sum(baseline_seconds))
    time = sum(step_times[k] / step_times[0] * b for k, b in zip(frozen_per_step, baseline_seconds))
    return {"time": time, "baseline": baseline, "saving": 1.0 - time / baseline}


def interpolate_step_times(measured: dict[int, float], n: int) -> list[float]:
    """Step times for every ``k = 0 .. n`` from a subset (must include 0 and n), linear in between.

    Used when measuring every ``k`` of a deep model would take too long; ``T(k)`` is close to linear
    between nearby ``k`` since each frozen layer removes its own backward cost.
    """
    ks = sorted(measured)
    if not ks or ks[0] != 0 or ks[-1] != n:
        raise ValueError(f"measured step times must include k = 0 and k = n = {n}, got k = {ks}")
    out = []
    for k in range(n + 1):
        hi = next(j for j in ks if j >= k)
        lo = max(j for j in ks if j <= k)
        w = 0.0 if hi == lo else (k - lo) / (hi - lo)
        out.append((1 - w) * measured[lo] + w * measured[hi])
    return out
