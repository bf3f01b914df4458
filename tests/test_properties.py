"""Property tests of the schedule and the controller's state (hypothesis)."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from freezeout import FreezeOut, freeze_times, layer_lr, learning_rates, num_frozen_at, param_groups

t0s = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
schedules = st.sampled_from(["linear", "cubic"])
ns = st.integers(min_value=1, max_value=60)
totals = st.integers(min_value=1, max_value=500)


@given(n=ns, t0=t0s, schedule=schedules)
def test_times_increase_within_unit_interval(n, t0, schedule):
    times = freeze_times(n, t0, schedule)
    assert len(times) == n
    assert all(0.0 < t <= 1.0 for t in times)
    assert all(a <= b for a, b in pairwise(times))
    if (1.0 - t0) / n > 1e-9:  # strictly, wherever the spacing is above float resolution near 1
        assert all(a < b for a, b in pairwise(times))


@given(n=ns, t0=t0s, schedule=schedules, scale=st.booleans(), total=totals, base=st.floats(1e-4, 10.0))
def test_lrs_bounded_and_non_increasing_in_time(n, t0, schedule, scale, total, base):
    times = freeze_times(n, t0, schedule)
    bases = [base] * (n + 1)
    start = learning_rates(0, total, times, bases, scale)
    prev = start
    for step in range(1, total + 1, max(1, total // 50)):
        lrs = learning_rates(step, total, times, bases, scale)
        assert all(0.0 <= lr <= s * (1 + 1e-12) for lr, s in zip(lrs, start))
        assert all(lr <= p * (1 + 1e-12) for lr, p in zip(lrs, prev))
        prev = lrs


@given(n=ns, t0=t0s, schedule=schedules, total=totals)
def test_num_frozen_grows_to_all_layers(n, t0, schedule, total):
    times = freeze_times(n, t0, schedule)
    counts = [num_frozen_at(s, total, times) for s in range(total + 1)]
    assert all(a <= b for a, b in pairwise(counts))
    assert counts[-1] == (n if t0 < 1.0 else 0)
    for s, c in enumerate(counts):  # a layer is frozen exactly when its LR has reached 0
        lrs = learning_rates(s, total, times, [1.0] * (n + 1), True)
        assert all(lr == 0.0 for lr in lrs[:c])


@given(n=st.integers(1, 8), t0=t0s, schedule=schedules)
@settings(max_examples=30)
def test_scaled_curves_have_equal_areas(n, t0, schedule):
    samples = 4000
    for t_i in [*freeze_times(n, t0, schedule), 1.0]:
        # substitute t = t_i * u so even a tiny t_i is resolved; the area must be base / 2
        area = t_i * sum(layer_lr(t_i * (k + 0.5) / samples, t_i, 1.0, True) for k in range(samples)) / samples
        assert math.isclose(area, 0.5, rel_tol=1e-6)


def _stack(n: int) -> tuple[nn.Module, list[nn.Module]]:
    layers = [nn.Linear(2, 2) for _ in range(n)]
    return nn.Sequential(*layers, nn.Linear(2, 1)), layers


@given(n=st.integers(1, 6), t0=t0s, schedule=schedules, scale=st.booleans(), total=st.integers(1, 40), data=st.data())
@settings(max_examples=40, deadline=None)
def test_state_dict_round_trip_at_any_step(n, t0, schedule, scale, total, data):
    step = data.draw(st.integers(0, total + 2))
    model, layers = _stack(n)
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.1, momentum=0.9)
    sched = FreezeOut(opt, layers, total, t0=t0, schedule=schedule, scale_lr=scale)
    for _ in range(step):
        sched.step()
    model2, layers2 = _stack(n)
    opt2 = torch.optim.SGD(param_groups(model2, layers2), lr=0.1, momentum=0.9)
    sched2 = FreezeOut(opt2, layers2, total, t0=t0, schedule=schedule, scale_lr=scale)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.num_frozen == sched.num_frozen
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert [p.requires_grad for p in model2.parameters()] == [p.requires_grad for p in model.parameters()]
    assert [m.training for m in model2.modules()] == [m.training for m in model.modules()]
