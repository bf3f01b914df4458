"""The schedule's closed forms (docs/METHOD.md, "The schedule")."""

from __future__ import annotations

import math

import pytest

from freezeout import freeze_times, layer_lr, learning_rates, num_frozen_at


def test_linear_times_are_evenly_spaced_from_t0():
    assert freeze_times(4, 0.5, "linear") == pytest.approx([0.5, 0.625, 0.75, 0.875])


def test_cubic_times_cube_the_linear_ones():
    # The paper: t0 = 0.8 cubic means the first layer stops at 0.512.
    times = freeze_times(5, 0.8, "cubic")
    assert times[0] == pytest.approx(0.512)
    assert times == pytest.approx([(0.8 + 0.2 * i / 5) ** 3 for i in range(5)])


def test_t0_one_is_plain_cosine_with_no_freezing():
    times = freeze_times(3, 1.0, "cubic")
    assert times == [1.0, 1.0, 1.0]
    assert all(num_frozen_at(s, 10, times) == 0 for s in range(12))
    lrs = learning_rates(5, 10, times, [0.1] * 4, scale_lr=True)
    assert lrs == pytest.approx([0.05] * 4)  # half-way through a cosine from 0.1


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
@pytest.mark.parametrize("scale", [True, False])
def test_lr_at_boundaries_and_midpoints(schedule, scale):
    base = 0.1
    times = freeze_times(4, 0.5, schedule)
    for t_i in times:
        lr0 = base / t_i if scale else base
        assert layer_lr(0.0, t_i, base, scale) == pytest.approx(lr0)  # full LR at the start
        assert layer_lr(t_i / 2, t_i, base, scale) == pytest.approx(lr0 / 2)  # cos(pi/2) = 0
        assert layer_lr(t_i / 3, t_i, base, scale) == pytest.approx(0.75 * lr0)  # cos(pi/3) = 1/2
        assert layer_lr(t_i, t_i, base, scale) == 0.0  # frozen from t_i on
        assert layer_lr(1.0, t_i, base, scale) == 0.0


def test_learning_rates_at_steps_follow_t_over_total():
    times = freeze_times(2, 0.5, "linear")  # [0.5, 0.75]
    base = [0.1, 0.1, 0.2]
    lrs = learning_rates(25, 100, times, base, scale_lr=True)
    assert lrs[0] == pytest.approx(0.5 * (0.1 / 0.5) * (1 + math.cos(math.pi * 0.25 / 0.5)))
    assert lrs[1] == pytest.approx(0.5 * (0.1 / 0.75) * (1 + math.cos(math.pi * 0.25 / 0.75)))
    assert lrs[2] == pytest.approx(0.5 * 0.2 * (1 + math.cos(math.pi * 0.25)))  # the rest: never scaled
    assert learning_rates(100, 100, times, base)[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_scaled_curves_integrate_to_the_same_area(schedule):
    base, n, samples = 0.1, 6, 200_000
    times = freeze_times(n, 0.3, schedule)
    areas = []
    for t_i in [*times, 1.0]:
        # midpoint rule over [0, 1]; the area of the scaled curve is base / 2 whatever t_i is
        area = sum(layer_lr((k + 0.5) / samples, t_i, base, True) for k in range(samples)) / samples
        areas.append(area)
    assert areas == pytest.approx([base / 2] * (n + 1), rel=1e-3)


def test_num_frozen_is_a_growing_prefix_and_all_at_the_end():
    times = freeze_times(5, 0.5, "linear")  # 0.5, 0.6, ..., 0.9
    counts = [num_frozen_at(s, 10, times) for s in range(11)]
    assert counts == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 5]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n": 3, "t0": 0.0}, "t0"),
        ({"n": 3, "t0": 1.5}, "t0"),
        ({"n": 3, "t0": -0.1}, "t0"),
        ({"n": 3, "t0": float("nan")}, "t0"),
        ({"n": 3, "t0": "abc"}, "t0"),
        ({"n": 3, "t0": 0.5, "schedule": "quadratic"}, "schedule"),
        ({"n": 0, "t0": 0.5}, "n"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        freeze_times(**kwargs)
