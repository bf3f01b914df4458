"""The estimates: FLOPs against hand counts, the paper's formula, integrating a step-time curve."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from freezeout import freeze_times, num_frozen_at
from freezeout.analysis.cost import (
    LINEAR_CORRECTION,
    integrate_on_baseline,
    integrate_step_times,
    interpolate_step_times,
    paper_saving,
    steps_per_frozen_count,
)
from freezeout.analysis.estimate import estimate_saving, predict
from freezeout.analysis.flops import layer_flops


class Toy(nn.Module):
    """conv 3->4 (3x3) -> conv 4->5 (1x1) -> linear 5*6*6 -> 7 (freezable); head linear 7 -> 3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 5, 1, bias=False))
        self.mid = nn.Sequential(nn.Flatten(), nn.Linear(5 * 6 * 6, 7))
        self.fc = nn.Linear(7, 3)

    @property
    def layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.mid]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.mid(self.conv2(self.conv1(x)))))


def test_layer_flops_match_hand_count():
    torch.manual_seed(0)
    model, batch = Toy(), 2
    flops, rest = layer_flops(model, model.layers, torch.randn(batch, 3, 6, 6))
    # conv: 2 * Cin * Cout * k * k * H * W * batch (stride 1, same padding); linear: 2 * in * out * batch
    assert flops == [2 * 3 * 4 * 9 * 36 * batch, 2 * 4 * 5 * 1 * 36 * batch, 2 * 180 * 7 * batch]
    assert rest == 2 * 7 * 3 * batch


def test_layer_flops_leave_model_unchanged():
    torch.manual_seed(0)
    model = Toy()
    model.conv2.insert(1, nn.BatchNorm2d(4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_flops(model, model.layers, torch.randn(4, 3, 6, 6))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no BatchNorm statistics moved
    assert all(m.training for m in model.modules())


def test_paper_saving_hand_computed():
    # C = 2 (10 + 20 + 5) = 70; C_f = 1.5 * 10 + 1.75 * 20 + 2 * 5 = 60
    assert paper_saving([10, 20], 5, [0.5, 0.75]) == pytest.approx(1 - 60 / 70)
    assert paper_saving([10, 20], 5, [0.5, 0.75], correction=1.3) == pytest.approx(1.3 * (1 - 60 / 70))
    assert paper_saving([10, 20], 5, [1.0, 1.0]) == 0.0  # t0 = 1: the baseline
    with pytest.raises(ValueError, match="same length"):
        paper_saving([1, 2], 0, [0.5])


def test_predict_applies_correction_to_linear_only():
    flops, rest = [5.0, 7.0, 9.0], 3.0
    for schedule in ("linear", "cubic"):
        row = predict(flops, rest, 0.6, schedule, linear_correction=True)
        plain = paper_saving(flops, rest, freeze_times(3, 0.6, schedule))
        want = LINEAR_CORRECTION if schedule == "linear" else 1.0
        assert row["paper_saving"] == pytest.approx(plain)
        assert row["paper_saving_corrected"] == pytest.approx(want * plain)
    # scaling changes learning rates, not freeze times: the same estimate, labelled apart
    a, b = predict(flops, rest, 0.5, "cubic", True), predict(flops, rest, 0.5, "cubic", False)
    assert a["paper_saving"] == b["paper_saving"] and a["scale_lr"] != b["scale_lr"]


def test_integrate_linear_curve_closed_form():
    # T(k) = a + b k, linear schedule, n = 4, t0 = 0.5, S = 16: freeze steps 8, 10, 12, 14 exactly.
    a, b, n, t0, steps = 3.0, -0.5, 4, 0.5, 16
    times = freeze_times(n, t0, "linear")
    curve = [a + b * k for k in range(n + 1)]
    assert steps_per_frozen_count(times, steps) == [8, 2, 2, 2, 2]
    # sum over steps of T(frozen) = S a + b sum_i (S - t_i S)
    want = steps * a + b * sum(steps - t * steps for t in times)
    got = integrate_step_times(curve, times, steps)
    assert got["time"] == pytest.approx(want)
    assert got["baseline"] == steps * a
    assert got["saving"] == pytest.approx(1 - want / (steps * a))
    # the continuous limit: per unit of training, a + b sum_i (1 - t_i)
    cont = integrate_step_times(curve, times, None)
    assert cont["time"] == pytest.approx(a + b * sum(1 - t for t in times))


@pytest.mark.parametrize(
    ("n", "t0", "schedule", "steps"), [(39, 0.8, "cubic", 40), (7, 0.3, "linear", 13), (5, 1.0, "cubic", 9)]
)
def test_step_counts_agree_with_num_frozen_at(n, t0, schedule, steps):
    times = freeze_times(n, t0, schedule)
    brute = [0] * (n + 1)
    for s in range(steps):
        brute[num_frozen_at(s, steps, times)] += 1
    assert steps_per_frozen_count(times, steps) == brute
    curve = [1.0 + math.sin(k) ** 2 for k in range(n + 1)]
    assert integrate_step_times(curve, times, steps)["time"] == pytest.approx(sum(c * w for c, w in zip(curve, brute)))


def test_integrate_on_baseline_flat_and_drifting():
    n, t0, steps = 6, 0.5, 20
    times = freeze_times(n, t0, "cubic")
    frozen = [num_frozen_at(s, steps, times) for s in range(steps)]
    curve = [2.0 - 0.25 * k for k in range(n + 1)]
    # a flat baseline at T(0): exactly the integral over the schedule
    flat = integrate_on_baseline(curve, frozen, [curve[0]] * steps)
    assert flat["saving"] == pytest.approx(integrate_step_times(curve, times, steps)["saving"])
    # a machine whose speed swings: a run whose every step costs exactly T(k)/T(0) of the baseline step beside it
    # realizes the saving this ideal names, which the flat integral misses
    speed = [1.0 + 0.4 * math.sin(s) for s in range(steps)]
    base = [curve[0] * v for v in speed]
    run = [curve[k] * v for k, v in zip(frozen, speed)]
    drift = integrate_on_baseline(curve, frozen, base)
    assert drift["saving"] == pytest.approx(1 - sum(run) / sum(base))
    assert drift["baseline"] == pytest.approx(sum(base))
    assert abs(drift["saving"] - flat["saving"]) > 0.01
    with pytest.raises(ValueError, match="one entry per step"):
        integrate_on_baseline(curve, frozen, base[:-1])
    with pytest.raises(ValueError, match=r"frozen_per_step must lie in 0 \.\. 6"):
        integrate_on_baseline(curve, [7] * steps, base)


def test_interpolate_step_times():
    line = {k: 2.0 - 0.1 * k for k in (0, 3, 10)}
    assert interpolate_step_times(line, 10) == pytest.approx([2.0 - 0.1 * k for k in range(11)])
    with pytest.raises(ValueError, match="k = 0 and k = n"):
        interpolate_step_times({0: 1.0, 5: 0.5}, 10)


def test_estimate_saving_paper_and_calibrated():
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(2, 3, 6, 6)
    before = [p.detach().clone() for p in model.parameters()]
    out = estimate_saving(model, model.layers, x, t0=0.5, schedule="linear", calibrate=True, repeats=1)
    flops, rest = layer_flops(model, model.layers, x)
    assert out["paper_saving"] == pytest.approx(paper_saving(flops, rest, freeze_times(3, 0.5, "linear")))
    assert len(out["step_times"]) == 4 and all(t > 0 for t in out["step_times"])
    t = out["step_times"]  # linear t_i = 1/2, 2/3, 5/6: half the run with none frozen, a sixth with each k > 0
    assert out["calibrated_saving"] == pytest.approx(1 - (t[0] / 2 + sum(t[1:]) / 6) / t[0])
    # measured on a copy: the user's model did not train
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t0": 0.0}, "t0 must be a number in"),
        ({"t0": 1.5}, "t0 must be a number in"),
        ({"schedule": "quadratic"}, "schedule must be"),
    ],
)
def test_estimate_rejects_bad_arguments(kwargs, match):
    model = Toy()
    with pytest.raises(ValueError, match=match):
        estimate_saving(model, model.layers, torch.randn(2, 3, 6, 6), **kwargs)


def test_estimate_rejects_empty_batch():
    model = Toy()
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        estimate_saving(model, model.layers, torch.randn(0, 3, 6, 6))


def test_zero_cost_saving_is_the_frozen_forward_saved_too():
    from freezeout.analysis.cost import paper_saving, zero_cost_saving

    flops, rest, times = [3.0, 2.0, 1.0], 1.0, [0.2, 0.5, 1.0]
    # closed form: C = 2 * 7 = 14; a frozen layer still costs its forward in paper_saving, nothing in the bound
    assert zero_cost_saving(flops, rest, times) == pytest.approx(1 - (2 * (0.6 + 1.0 + 1.0) + 2.0) / 14)
    assert zero_cost_saving(flops, rest, times) > paper_saving(flops, rest, times)
    assert zero_cost_saving(flops, rest, [1.0] * 3) == 0.0
