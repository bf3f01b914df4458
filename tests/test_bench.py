"""The bench library: real FreezeOut loops on a copy, the ideal from the same step-time curve."""

from __future__ import annotations

import pytest
import torch

from freezeout import freeze_times
from freezeout.bench import BenchConfig, run_bench, total_work
from freezeout.estimate import integrate_step_times
from freezeout.timing import default_ks, step_time_curve


def test_run_bench_rows_and_model_untouched(tiny):
    x = torch.randn(4, 3, 8, 8)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    config = BenchConfig(
        steps=8, repeats=1, strategies=[("linear", False), ("cubic", True)], t0s=[0.5], overhead_calls=10
    )
    done = []
    result = run_bench(tiny, tiny.layers, x, config, progress=done.append)
    assert sum(done) == total_work(config, 4)  # the progress bar ends full, warm-up round included
    assert [r["name"] for r in result["rows"]] == ["linear-unscaled-0.5", "cubic-scaled-0.5"]
    for row in result["rows"]:
        times = freeze_times(4, 0.5, row["schedule"])
        assert row["ideal_saving"] == pytest.approx(integrate_step_times(result["step_times"], times, 8)["saving"])
        assert row["calibrated_saving"] == pytest.approx(integrate_step_times(result["step_times"], times)["saving"])
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert all(p.requires_grad for p in tiny.parameters())


def test_bench_config_validation():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        BenchConfig(steps=0).validate()
    with pytest.raises(ValueError, match="t0 must be in"):
        BenchConfig(t0s=[1.5]).validate()
    with pytest.raises(ValueError, match="schedule must be"):
        BenchConfig(strategies=[("quad", True)]).validate()


def test_curve_subset_is_interpolated(tiny):
    curve = step_time_curve(tiny, tiny.layers, torch.randn(2, 3, 8, 8), ks=[2], repeats=1, warmup=0)
    assert curve["ks"] == [0, 2, 4] and len(curve["step_times"]) == 5
    t = curve["step_times"]
    assert t[1] == pytest.approx((t[0] + t[2]) / 2) and t[3] == pytest.approx((t[2] + t[4]) / 2)
    assert curve["saved_bytes"]["all_frozen"] < curve["saved_bytes"]["none_frozen"]
    assert default_ks(39) == list(range(40)) and default_ks(100, 11) == list(range(0, 101, 10))


def test_warm_rounds_are_run_but_not_recorded(tiny):
    steps = []
    curve = step_time_curve(tiny, tiny.layers, torch.randn(2, 3, 8, 8), repeats=2, warm_rounds=1, progress=steps.append)
    assert len(steps) == 5 * 3  # 5 k's x (1 warm + 2 timed) rounds
    assert all(len(v) == 2 for v in curve["samples"].values())
    with pytest.raises(ValueError, match="warm_rounds must be an integer >= 0"):
        step_time_curve(tiny, tiny.layers, torch.randn(2, 3, 8, 8), warm_rounds=-1)
