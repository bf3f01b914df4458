"""``freezeout estimate`` and ``freezeout bench`` from the command line: output shape and one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import one_line_error
from tests.helpers.cli import run as cli

TINY = ["--depth", "10", "--growth", "2", "--input-size", "8", "--batch-size", "4"]


def test_estimate_json_rows_for_every_strategy_and_t0():
    out = cli("estimate", *TINY, "--schedule", "all", "--t0", "0.5", "0.8", "--linear-correction", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["num_layers"] == 6 and len(result["layer_flops"]) == 6
    assert result["input_shape"] == [4, 3, 8, 8]
    rows = result["rows"]
    combos = {(r["schedule"], r["scale_lr"], r["t0"]) for r in rows}
    assert combos == {(s, sc, t) for s in ("linear", "cubic") for sc in (False, True) for t in (0.5, 0.8)}
    assert len(rows) == 8
    for r in rows:
        assert {"paper_saving", "paper_saving_corrected", "paper_correction"} <= r.keys()
        assert "calibrated_saving" not in r
        assert r["paper_correction"] == (1.3 if r["schedule"] == "linear" else 1.0)
        assert 0 < r["paper_saving"] < 1
    # a smaller t0 freezes earlier: a larger saving, whatever the strategy
    by = {(r["schedule"], r["scale_lr"], r["t0"]): r["paper_saving"] for r in rows}
    assert all(by[(s, sc, 0.5)] > by[(s, sc, 0.8)] for s, sc, _ in by)


def test_estimate_calibrated_row_and_table():
    out = cli("estimate", *TINY, "--calibrate", "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    (row,) = result["rows"]
    assert (row["schedule"], row["scale_lr"], row["t0"]) == ("cubic", True, 0.8)
    assert len(result["step_times"]) == 7 and isinstance(row["calibrated_saving"], float)
    table = cli("estimate", *TINY, "--schedule", "linear", "--no-scale-lr", "--t0", "0.5")
    assert table.returncode == 0 and "linear   unscaled  0.50" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "vgg"], "invalid choice"),
        (["--t0", "0"], "--t0: must be in (0, 1]"),
        (["--t0", "1.2"], "--t0: must be in (0, 1]"),
        (["--batch-size", "0"], "--batch-size: expected an integer in [1, "),
        (["--schedule", "quadratic"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line(args, needle):
    for command in ("estimate", "bench"):
        one_line_error(cli(command, *TINY, *args), needle)


@pytest.mark.parametrize("lockstep", [[], ["--lockstep"]])
def test_bench_end_to_end_writes_json(tmp_path, lockstep):
    path = tmp_path / "sub" / "bench.json"
    out = cli(
        "bench",
        *TINY,
        *lockstep,
        "--steps",
        "6",
        "--repeats",
        "1",
        "--schedule",
        "cubic",
        "--t0",
        "0.5",
        "--quiet",
        "--out",
        str(path),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(path.read_text())
    assert {
        "config",
        "model",
        "num_layers",
        "layer_flops",
        "step_times",
        "baseline",
        "sched_step",
        "memory",
        "rows",
    } <= result.keys()
    assert len(result["step_times"]) == result["num_layers"] + 1 == 7
    (row,) = result["rows"]
    keys = {"paper_saving", "calibrated_saving", "ideal_saving", "realized_saving", "sched_step_fraction", "seconds"}
    assert keys <= row.keys()
    assert row["num_frozen_at_end"] == 6  # the real FreezeOut loop froze every layer
    assert row["seconds"] > 0 and result["baseline"]["seconds"] > 0
    saved = result["memory"]["saved_for_backward_bytes"]
    assert saved["all_frozen"] < saved["none_frozen"]
    assert "realized" in out.stdout and not list(path.parent.glob("*tmp"))
    # two costs, two names: the run's step() calls with their freezes (the table), a steady step() alone (below)
    lines = out.stdout.splitlines()
    header = next(x for x in lines if x.startswith("schedule"))
    assert header.split()[-1] == "step()+frz" and "sched.step" not in header
    assert lines[lines.index(header) + 1].split()[-1] == f"{100 * row['sched_step_fraction']:.3f}%"
    sched = result["sched_step"]
    assert (
        "step()+frz = the run's sched.step() calls, freezes included (folds: next forward), over the rest of its "
        f"training time; a steady sched.step() alone (no freeze): {1e6 * sched['seconds_per_call']:.1f} us "
        f"= {100 * sched['fraction_of_step']:.4f}% of a baseline step"
    ) in out.stdout
    # lockstep: the ideal on the baseline's own step times, and the flat integral beside it, in the JSON and printed
    assert ("ideal_saving_flat" in row) == bool(lockstep) == ("flat over the run: cubic-scaled-0.5" in out.stdout)


@pytest.mark.parametrize("flag, want", [([], True), (["--no-channels-last"], False)])
def test_estimate_and_bench_time_the_trainers_layout(flag, want):
    import argparse

    import torch

    from freezeout.analysis.flops import layer_flops
    from freezeout.cli.estimate import add_model_args, build

    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args([*TINY, *flag])
    model, layers, x = build(args, training=True)  # the real input that steps are timed on
    fmt = torch.channels_last if want else torch.contiguous_format
    assert args.channels_last is want and x.is_contiguous() is not want
    assert x.is_contiguous(memory_format=fmt) and model.stem.weight.is_contiguous(memory_format=fmt)
    # FLOPs do not depend on the layout
    nchw = build(p.parse_args([*TINY, "--no-channels-last"]), training=True)
    assert layer_flops(model, layers, x) == layer_flops(nchw[0], nchw[1], nchw[2])
    out = cli("estimate", *TINY, *flag, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["channels_last"] is want
