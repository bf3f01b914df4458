"""The bench library: real FreezeOut loops on a copy, the ideal from the same step-time curve."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from freezeout import freeze_times, num_frozen_at
from freezeout.analysis.bench import BenchConfig, run_bench, total_work
from freezeout.analysis.timing import default_ks, step_time_curve

JSON_KEYS = (
    "config", "num_layers", "batch_size", "input_shape", "threads", "device", "layer_flops", "rest_flops",
    "step_times", "curve_ks", "curve_samples", "curves", "baseline", "sched_step", "memory", "rows",
)  # fmt: skip


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
    t = result["step_times"]
    # Worked by hand, n = 4, t0 = 0.5, 8 steps (step s runs at progress s / 8):
    # linear t_i = 0.5, 0.625, 0.75, 0.875: steps 0-3 run with 0 frozen, steps 4, 5, 6, 7 with 1, 2, 3, 4;
    # cubic t_i = 0.125, 0.244, 0.422, 0.670: step 0 with 0, step 1 with 1, 2-3 with 2, 4-5 with 3, 6-7 with 4.
    ideal = {"linear": [4, 1, 1, 1, 1], "cubic": [1, 1, 2, 2, 2]}
    # the continuous limit: the fraction of training with k frozen is t_k - t_(k-1)
    cont = {"linear": [0.5, 0.125, 0.125, 0.125, 0.125], "cubic": [0.125, 0.625**3 - 0.125, 0.75**3 - 0.625**3,
                                                                    0.875**3 - 0.75**3, 1 - 0.875**3]}  # fmt: skip
    for row in result["rows"]:
        weights = ideal[row["schedule"]]
        assert row["ideal_saving"] == pytest.approx(1 - sum(w * tk for w, tk in zip(weights, t)) / (8 * t[0]))
        weights = cont[row["schedule"]]
        assert row["calibrated_saving"] == pytest.approx(1 - sum(w * tk for w, tk in zip(weights, t)) / t[0])
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert all(p.requires_grad for p in tiny.parameters())
    # the JSON `freezeout bench --out` writes: these keys, `model` only once the command line named it
    record = result.to_dict()
    assert set(record) == set(JSON_KEYS) and set(json.loads(json.dumps(record))) == set(JSON_KEYS)
    result.model = {"name": "tiny"}
    assert list(result.to_dict())[-1] == "model" and result["model"] == {"name": "tiny"}
    with pytest.raises(KeyError):
        result["rows_"]


def test_curve_is_measured_in_slices_between_the_repeats(tiny, monkeypatch):
    import freezeout.analysis.bench as bench

    order = []
    real_curve, real_loop = bench.step_time_curve, bench.timed_run
    monkeypatch.setattr(bench, "step_time_curve", lambda *a, **kw: order.append("curve") or real_curve(*a, **kw))
    monkeypatch.setattr(bench, "timed_run", lambda *a, **kw: order.append("run") or real_loop(*a, **kw))
    config = BenchConfig(steps=4, repeats=2, curve_repeats=3, strategies=[("cubic", True)], overhead_calls=10)
    done = []
    result = run_bench(tiny, tiny.layers, torch.randn(2, 3, 8, 8), config, progress=done.append)
    # warm-up run, then per repeat: a slice of the curve, baseline and FreezeOut runs
    assert order == ["run", "curve", "run", "run", "curve", "run", "run"]
    assert sum(done) == total_work(config, 4)
    samples = result["curve_samples"]
    assert sorted(map(int, samples)) == [0, 1, 2, 3, 4]
    assert all(len(v) == 4 for v in samples.values())  # 2 slices x ceil(3 / 2) timed steps per k
    assert all(result["step_times"][int(k)] == statistics.median(v) for k, v in samples.items())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_runs_train_on_batches_in_the_examples_layout(tiny, monkeypatch, fmt):
    import freezeout.analysis.bench as bench

    layouts = []
    real_loop = bench.timed_run
    monkeypatch.setattr(bench, "timed_run", lambda t, data, *a: layouts.append(data) or real_loop(t, data, *a))
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt)
    run_bench(tiny, tiny.layers, x, BenchConfig(steps=2, repeats=1, curve_repeats=1, overhead_calls=1))
    # the step-time curve times the example itself; the runs must see the same layout, or the two disagree
    assert layouts and all(b.is_contiguous(memory_format=fmt) for data in layouts for b, _ in data)
    assert all(not torch.equal(data[0][0], data[1][0]) for data in layouts)  # distinct random batches


def test_bench_config_validation():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        BenchConfig(steps=0).validate()
    with pytest.raises(ValueError, match=r"t0 must be a number in \(0, 1\]"):
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


def test_compare_fuse_runs_every_row_both_ways_each_against_its_own_curve(tiny, monkeypatch):
    import freezeout.analysis.bench as bench

    fused_runs = []
    real_loop = bench.timed_run
    monkeypatch.setattr(bench, "timed_run", lambda *a: fused_runs.append(a[-2][-1]) or real_loop(*a))
    config = BenchConfig(steps=4, repeats=1, curve_repeats=1, t0s=[0.5], overhead_calls=1, compare_fuse=True, fuse=True)
    done = []
    result = run_bench(tiny, tiny.layers, torch.randn(2, 3, 8, 8), config, progress=done.append)
    assert sum(done) == total_work(config, 4)
    assert [(r["name"], r["fuse"]) for r in result["rows"]] == [
        ("cubic-scaled-0.5-fused", True),
        ("cubic-scaled-0.5-plain", False),
    ]
    assert sorted(fused_runs[1:]) == [False, True, True]  # after the warm-up: baseline, one run per setting
    # by hand: cubic t_i = 0.125, 0.244, 0.422, 0.670 over 4 steps: step 0 runs with none frozen, step 1 with
    # 2 (t = 0.25), step 2 with 3, step 3 with all 4
    for row, curve in zip(result["rows"], ("fused", "plain")):
        t = result["curves"][curve]["step_times"]
        assert row["ideal_saving"] == pytest.approx(1 - (t[0] + t[2] + t[3] + t[4]) / (4 * t[0]))
    with pytest.raises(ValueError, match="compare_fuse must be True or False"):
        BenchConfig(compare_fuse=1).validate()


def test_lockstep_runs_interleave_steps_and_train_each_model_as_alone(tiny, monkeypatch):
    import freezeout.analysis.runs as runs
    from freezeout.analysis.workload import copy_model, model_loss

    calls, models = [], {}
    real_step = runs.train_step

    def recording_step(model, *a):
        models[id(model)] = model
        calls.append(id(model))
        return real_step(model, *a)

    monkeypatch.setattr(runs, "train_step", recording_step)
    template = copy_model(tiny, tiny.layers)
    for m in template[0].modules():  # dropout draws from the global generator, which interleaved runs share
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2,), generator=g)) for _ in range(3)]
    specs = [("b", 1.0, "cubic", True, True), ("c", 0.5, "cubic", True, True), ("l", 0.5, "linear", False, False)]
    done = []
    out = runs.lockstep_runs(template, data, model_loss, 6, 0.1, specs, progress=done.append)
    assert sum(done) == 6 * 3 and [out[name]["num_frozen"] for name, *_ in specs] == [0, 4, 4]
    assert all(0 < r["sched_seconds"] < r["seconds"] for r in out.values())
    # every step's seconds and the layers it ran with frozen: what the schedule says for that step
    for name, t0, schedule, *_ in specs:
        times = freeze_times(4, t0, schedule)
        assert out[name]["step_frozen"] == [num_frozen_at(s, 6, times) for s in range(6)]
        assert sum(out[name]["step_seconds"]) == pytest.approx(out[name]["seconds"])
    # step s of every run before step s + 1 of any, the first of each step rotating through the runs
    steps = [calls[i : i + 3] for i in range(0, 18, 3)]
    order = steps[0]
    assert len(set(order)) == 3 and all(sorted(s) == sorted(order) for s in steps)
    assert [s[0] for s in steps] == [order[0], order[1], order[2], order[0], order[1], order[2]]
    # and each run trained its own model exactly as a run on its own does, to the bit
    for spec, key in zip(specs, order):
        calls.clear()
        runs.timed_run(template, data, model_loss, 6, 0.1, spec)
        alone = models[calls[0]].state_dict()
        assert all(torch.equal(v, alone[k]) for k, v in models[key].state_dict().items())


def test_bench_lockstep_rows(tiny):
    config = BenchConfig(steps=4, repeats=2, curve_repeats=1, t0s=[0.5], overhead_calls=1, lockstep=True, fuse=True)
    done = []
    result = run_bench(tiny, tiny.layers, torch.randn(2, 3, 8, 8), config, progress=done.append)
    assert sum(done) == total_work(config, 4)
    (row,) = result["rows"]
    assert row["num_frozen_at_end"] == 4 and len(row["runs_seconds"]) == 2 and result["config"]["lockstep"] is True
    per_repeat = [1 - r / b for r, b in zip(row["runs_seconds"], result["baseline"]["runs_seconds"])]
    assert row["realized_saving"] == pytest.approx(sum(per_repeat) / 2)  # the median of two: a repeat's own ratios
    # the ideal on the baseline's own seconds: cubic t0 = 0.5 over 4 steps runs its steps with 0, 2, 3, 4 frozen
    # (by hand, as above), each costing T(k)/T(0) times the baseline step beside it; the median of the two repeats
    t = result["step_times"]
    assert row["step_frozen"] == [0, 2, 3, 4] and row["ideal_saving_flat"] == pytest.approx(
        1 - (t[0] + t[2] + t[3] + t[4]) / (4 * t[0])
    )
    ideals = [
        1 - sum(t[k] / t[0] * s for k, s in zip((0, 2, 3, 4), b)) / sum(b)
        for b in result["baseline"]["runs_step_seconds"]
    ]
    assert row["ideal_saving"] == pytest.approx(sum(ideals) / 2)
    assert [sum(s) for s in row["runs_step_seconds"]] == pytest.approx(row["runs_seconds"])
    # the curve is paired: both slices' steps pooled, each k's median ratio to its neighbour times their median
    curve = result["curves"]["fused"]
    pairs, beside = curve["samples"], curve["neighbour_samples"]
    assert all(len(v) == len(beside[k]) == 2 for k, v in pairs.items())  # one timed step per k in each slice
    base = statistics.median(b for v in beside.values() for b in v)
    assert result["step_times"][0] == base  # k = 0: the unfrozen neighbour itself, timed beside every k
    for k, v in pairs.items():
        expected = statistics.median([v[0] / beside[k][0], v[1] / beside[k][1]]) * base
        assert k == "0" or result["step_times"][int(k)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lockstep must be True or False"):
        BenchConfig(lockstep="yes").validate()


def _drifting_clock(monkeypatch, period: int, amplitude: float) -> None:
    """A fake clock under ``timing``: a step costs 1 + its number of trainable layers, times a machine speed that
    swings by ``amplitude`` with a period of ``period`` steps (what this CPU does, only regular)."""
    import math
    import types

    import freezeout.analysis.timing as timing

    now, calls, real_step = [0.0], [0], timing.train_step

    def step(model, *args):
        real_step(model, *args)
        trainable = sum(any(p.requires_grad for p in layer.parameters()) for layer in model.layers)
        now[0] += (1 + trainable) * (1 + amplitude * math.sin(2 * math.pi * calls[0] / period))
        calls[0] += 1

    monkeypatch.setattr(timing, "train_step", step)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))


def test_a_paired_curve_keeps_its_shape_on_a_drifting_machine(tiny, monkeypatch):
    _drifting_clock(monkeypatch, period=28, amplitude=0.3)
    x = torch.randn(2, 3, 8, 8)
    truth = [5 - k for k in range(5)]  # 1 + trainable layers, k of the 4 frozen

    def shape_error(paired: bool) -> float:
        t = step_time_curve(tiny, tiny.layers, x, repeats=4, warmup=0, warm_rounds=0, paired=paired)["step_times"]
        return max(abs(t[k] / t[0] - truth[k] / truth[0]) / (truth[k] / truth[0]) for k in range(5))

    # the drift moves a lone step's time by up to 30 %: the unpaired curve's shape is off by more than a tenth
    # (so this clock tells the two apart), the paired one's by less than one step's drift (2 pi 0.3 / 28 = 0.07)
    assert shape_error(paired=False) > 0.1
    assert shape_error(paired=True) < 0.05
