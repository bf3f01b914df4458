"""Grid expansion, the sweep directory's config guard, and skip/resume with a fake trainer."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from freezeout.experiment.lock import LOCK_FILE
from freezeout.experiment.plan import dry_run
from freezeout.experiment.runstate import run_status
from freezeout.experiment.sweep import Grid, expand, run_sweep
from freezeout.schedule import STRATEGIES, parse_strategy
from tests.helpers.sweep_fakes import FakeTrainer
from tests.helpers.terminal import Terminal

BASE = {"dataset": "digits", "depth": 10, "growth": 4, "epochs": 3, "batch_size": 50, "lr": 0.1}


def as_dict(d):
    return dict(d)


def test_full_grid_counts_names_and_order():
    runs = expand(Grid(tuple(STRATEGIES), (0.5, 0.65, 0.8), (0, 1)))
    assert len(runs) == 4 * 3 * 2 + 2
    assert [r.name for r in runs[:2]] == ["baseline_seed=0", "baseline_seed=1"]  # baselines first
    assert all(r.baseline and r.t0 == 1.0 for r in runs[:2]) and not any(r.baseline for r in runs[2:])
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert "cubic-scaled_t0=0.8_seed=0" in names and "linear-unscaled_t0=0.65_seed=1" in names
    for r in runs[2:]:
        assert (r.schedule, r.scale_lr) == parse_strategy(r.strategy)
        assert r.name == f"{r.strategy}_t0={r.t0:g}_seed={r.seed}"
    # every (strategy, t0, seed) exactly once
    points = {(r.strategy, r.t0, r.seed) for r in runs[2:]}
    assert points == {(s, t, seed) for s in STRATEGIES for t in (0.5, 0.65, 0.8) for seed in (0, 1)}


def test_subset_and_repeats():
    runs = expand(Grid(["cubic-scaled", "cubic-scaled"], [0.8, 0.8, 0.5], [3]))
    assert [r.name for r in runs] == ["baseline_seed=3", "cubic-scaled_t0=0.8_seed=3", "cubic-scaled_t0=0.5_seed=3"]
    baselines = expand(Grid((), (), (0, 1)))  # baselines only is a valid grid
    assert [r.name for r in baselines] == ["baseline_seed=0", "baseline_seed=1"]


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        (Grid(tuple(STRATEGIES), (0.5,), ()), "seeds is empty"),
        (Grid((), (0.5,), (0,)), "strategies is empty"),
        (Grid(("cubic-scaled",), (), (0,)), "t0 list is empty"),
        (Grid(("cubic-scaled",), (0.5, 1.0), (0,)), "t0 must be a number in \\(0, 1\\)"),
        (Grid(("cubic-scaled",), (0.0,), (0,)), "t0 must be a number in"),
        (Grid(("cubic-scaled",), (float("nan"),), (0,)), "t0 must be a number in"),
        (Grid(("cubic",), (0.5,), (0,)), "strategy must be one of"),
        (Grid(("cubic-scaled",), (0.5,), (-1,)), "seed must be"),
        (Grid(("cubic-scaled",), (0.5, 0.5000000001), (0,)), "print the same"),
    ],
)
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        expand(grid)


def test_sweep_runs_everything_then_skips_finished(tmp_path):
    grid = Grid(("cubic-scaled", "linear-unscaled"), (0.5,), (0, 1))
    fake = FakeTrainer()
    summaries = run_sweep(BASE, grid, tmp_path, train_fn=fake, make_config=as_dict)
    assert [name for name, _ in fake.calls] == [r.name for r in expand(grid)]
    assert all(not resume for _, resume in fake.calls)
    assert [s["config"]["t0"] for s in summaries] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["base_config"] == BASE and sweep["grid"]["t0s"] == [0.5]
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    again = FakeTrainer()
    assert run_sweep(BASE, grid, tmp_path, train_fn=again, make_config=as_dict) == summaries
    assert again.calls == []
    ours = ("sweep.json", LOCK_FILE)  # the lock file records each holder
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name not in ours} == {
        p: m for p, m in mtimes.items() if p.name not in ours
    }


def test_progress_bar_counts_runs_and_names_each(tmp_path, monkeypatch):
    grid = Grid(("cubic-scaled",), (0.5,), (0, 1))
    names = [r.name for r in expand(grid)]
    n = len(names)
    for status in ("new", "finished"):  # the second pass skips every run, and says so
        monkeypatch.setattr(sys, "stderr", Terminal())
        run_sweep(BASE, grid, tmp_path, train_fn=FakeTrainer(), make_config=as_dict, progress=True)
        err = sys.stderr.getvalue()
        # before run i starts, i runs are done out of the grid's n; the postfix names the run and its status
        for i, name in enumerate(names):
            assert re.search(rf"{i}/{n} \[[^\]]*, {re.escape(name)} \({status}\)\]", err), err
        assert f"{n}/{n} [" in err, err


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    run_sweep(BASE, Grid(("cubic-scaled",), (0.5,), (0,)), tmp_path, train_fn=FakeTrainer(), make_config=as_dict,
              progress=True)  # fmt: skip
    assert "\r" not in capsys.readouterr().err


def test_interrupted_run_resumes_and_half_written_restarts(tmp_path):
    grid = Grid(("cubic-scaled",), (0.5, 0.8), (0,))
    killed = FakeTrainer(stop_after=("cubic-scaled_t0=0.5_seed=0", 2))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(BASE, grid, tmp_path, train_fn=killed, make_config=as_dict)
    assert run_status(tmp_path / "baseline_seed=0") == "finished"
    assert run_status(tmp_path / "cubic-scaled_t0=0.5_seed=0") == "interrupted"
    # a run killed before its first checkpoint, and one whose summary is torn or says unfinished
    half = tmp_path / "cubic-scaled_t0=0.8_seed=0"
    half.mkdir()
    (half / "metrics.jsonl").write_text('{"epoch": 1}\n{"ep')
    assert run_status(half) == "new"
    for text in ("{not json", json.dumps({"finished": False})):
        (half / "summary.json").write_text(text)
        assert run_status(half) == "new"

    fake = FakeTrainer()
    run_sweep(BASE, grid, tmp_path, train_fn=fake, make_config=as_dict)
    assert fake.calls == [("cubic-scaled_t0=0.5_seed=0", True), ("cubic-scaled_t0=0.8_seed=0", False)]
    for run in ("cubic-scaled_t0=0.5_seed=0", "cubic-scaled_t0=0.8_seed=0"):
        epochs = [json.loads(line)["epoch"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]  # each epoch once: resumed, not restarted; the torn file was removed


def test_refuses_a_directory_of_another_config(tmp_path):
    grid = Grid(("cubic-scaled",), (0.5,), (0,))
    run_sweep(BASE, grid, tmp_path, train_fn=FakeTrainer(), make_config=as_dict)
    with pytest.raises(ValueError, match=r"different config \(depth: 10 -> 22, epochs: 3 -> 4\)"):
        run_sweep({**BASE, "depth": 22, "epochs": 4}, grid, tmp_path, train_fn=FakeTrainer(), make_config=as_dict)
    # the per-run fields are the sweep's to set, not part of its config; a bigger grid is fine
    bigger = Grid(("cubic-scaled", "linear-scaled"), (0.5,), (0, 1))
    fake = FakeTrainer()
    run_sweep({**BASE, "t0": 0.3, "seed": 9}, bigger, tmp_path, train_fn=fake, make_config=as_dict)
    assert len(fake.calls) == len(expand(bigger)) - 2
    assert json.loads((tmp_path / "sweep.json").read_text())["grid"]["strategies"] == ["cubic-scaled", "linear-scaled"]


def test_dry_run_counts_what_is_left(tmp_path):
    grid = Grid(tuple(STRATEGIES), (0.5, 0.8), (0,))
    run_sweep(BASE, Grid((), (), (0,)), tmp_path, train_fn=FakeTrainer(), make_config=as_dict)
    plan = dry_run(BASE, grid, tmp_path)
    assert plan["num_runs"] == 9 and plan["num_to_run"] == 8 and plan["epochs_to_run"] == 8 * 3
    assert plan["runs"][0] == {"name": "baseline_seed=0", "status": "finished", "epochs": 3}
    assert plan["estimate"] is None
    with pytest.raises(ValueError, match="different config"):
        dry_run({**BASE, "lr": 0.05}, grid, tmp_path)
    assert not any(p.name != "baseline_seed=0" and p.is_dir() for p in tmp_path.iterdir())  # nothing run


def test_dry_run_estimate_integrates_the_measured_step_times(tmp_path, monkeypatch):
    import freezeout.experiment.plan as plan

    # A curve with a hand-workable integral: a step costs 2 s with nothing frozen, 1 s once anything is.
    def curve(model, layers, *args, **kwargs):
        return {"step_times": [2.0] + [1.0] * len(layers)}

    monkeypatch.setattr(plan, "step_time_curve", curve)
    grid = Grid(("cubic-scaled", "linear-scaled"), (0.5,), (0,))
    base = {**BASE, "model": "densenet-bc", "batch_size": 8}
    e = dry_run(base, grid, None, timing_steps=1)["estimate"]
    # digits: 1497 training images / 8 = 188 steps per epoch, 564 in 3 epochs. The first layer freezes at
    # t = 0.5 ** 3 = 0.125 (cubic; step ceil(70.5) = 71) and t = 0.5 (linear; step 282).
    assert e["seconds_per_baseline_epoch"] == 2.0 * 188
    baseline, cubic, linear = 2.0 * 564, 2.0 * 71 + (564 - 71), 2.0 * 282 + (564 - 282)
    assert e["seconds"] == pytest.approx(baseline + cubic + linear)
    assert os.listdir(tmp_path) == []


def test_a_field_added_later_at_its_default_is_not_a_difference(tmp_path):
    """A sweep begun before TrainConfig gained a field continues; a non-default value is still refused."""
    from freezeout.experiment.sweep import prepare_sweep_dir

    grid = Grid(("cubic-scaled",), (0.5,), (0,))
    prepare_sweep_dir(BASE, grid, tmp_path)
    record = json.loads((tmp_path / "sweep.json").read_text())
    del record["base_config"]["lr"]  # as if written before lr existed; BASE's lr 0.1 is the default
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    prepare_sweep_dir(BASE, grid, tmp_path)
    with pytest.raises(ValueError, match=r"different config \(lr: 0.1 -> 0.05\)"):
        prepare_sweep_dir({**BASE, "lr": 0.05}, grid, tmp_path)
