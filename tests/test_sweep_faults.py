"""A sweep directory's half-written or foreign runs (torn or empty summary, unfinished summary, a summary of
another config, a torn checkpoint) are detected and redone by the sweep, and never aggregated."""

from __future__ import annotations

import json

from freezeout.experiment.aggregate import aggregate
from freezeout.experiment.plan import dry_run
from freezeout.experiment.runstate import run_status
from freezeout.experiment.sweep import Grid, run_sweep
from tests.helpers.sweep_fakes import FakeTrainer, fake_error

BASE = {"dataset": "digits", "depth": 10, "growth": 4, "epochs": 3, "batch_size": 50, "lr": 0.1}
GRID = Grid(("cubic-scaled",), (0.5, 0.8), (0,))
A, B, BASELINE = "cubic-scaled_t0=0.5_seed=0", "cubic-scaled_t0=0.8_seed=0", "baseline_seed=0"


def as_dict(d):
    return dict(d)


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


def epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_half_written_and_foreign_runs_are_redone(tmp_path):
    run_sweep(BASE, GRID, tmp_path, train_fn=FakeTrainer(), make_config=as_dict)
    good = summary_of(tmp_path / BASELINE)
    # A: B's summary copied over A's (a finished run, but of another point)
    (tmp_path / A / "summary.json").write_text(json.dumps(summary_of(tmp_path / B)))
    # B: killed inside its summary write by a non-atomic writer (empty file), and a torn checkpoint
    (tmp_path / B / "summary.json").write_text("")
    (tmp_path / B / "checkpoint.pt").write_text('{"epo')
    # the baseline: a summary that does not say it finished
    (tmp_path / BASELINE / "summary.json").write_text(json.dumps({**good, "finished": False}))
    base = {**BASE, "schedule": "cubic", "scale_lr": True, "seed": 0}
    assert run_status(tmp_path / A, {**base, "t0": 0.5}) == "interrupted"  # not "finished": not A's summary
    assert run_status(tmp_path / A) == "finished"  # (without the expected config it would have counted)
    assert [r["status"] for r in dry_run(BASE, GRID, tmp_path)["runs"]] == ["interrupted"] * 3

    fake = FakeTrainer()
    summaries = run_sweep(BASE, GRID, tmp_path, train_fn=fake, make_config=as_dict)
    # the baseline resumes from its good checkpoint; A and B cannot be resumed and start over
    assert fake.calls == [(BASELINE, True), (A, True), (A, False), (B, True), (B, False)]
    assert [s["config"]["t0"] for s in summaries] == [1.0, 0.5, 0.8]
    assert summary_of(tmp_path / A)["test_error"] == fake_error(0.5, 0)
    assert epochs(tmp_path / A) == epochs(tmp_path / B) == [1, 2, 3]  # redone from scratch, once
    assert [r["status"] for r in dry_run(BASE, GRID, tmp_path)["runs"]] == ["finished"] * 3


def test_only_a_runs_own_finished_summary_is_aggregated(tmp_path):
    grid = Grid(("cubic-scaled",), (0.5,), (0, 1, 2, 3, 4, 5))
    run_sweep(BASE, grid, tmp_path, train_fn=FakeTrainer(), make_config=as_dict)
    bad = {
        "cubic-scaled_t0=0.5_seed=1": lambda s: {**s, "config": {**s["config"], "t0": 0.8}},  # another point
        "cubic-scaled_t0=0.5_seed=2": lambda s: {**s, "config": {**s["config"], "depth": 40}},  # another sweep
        "cubic-scaled_t0=0.5_seed=3": lambda s: {k: v for k, v in s.items() if k != "test_error"},
        "cubic-scaled_t0=0.5_seed=4": lambda s: {**s, "test_error": "NaN"},
        "cubic-scaled_t0=0.5_seed=5": lambda s: {**s, "finished": "yes"},
    }
    for name, change in bad.items():
        path = tmp_path / name / "summary.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    (tmp_path / "baseline_seed=5" / "summary.json").write_text('{"config": {"t0": 1.0, "se')  # torn
    table = aggregate(tmp_path, paper=False)
    assert sorted(table["incomplete"]) == sorted([*bad, "baseline_seed=5"])
    frozen = next(r for r in table["rows"] if r["strategy"] == "cubic-scaled")
    assert frozen["seeds"] == [0] and frozen["test_error_mean"] == fake_error(0.5, 0)
    assert next(r for r in table["rows"] if r["strategy"] == "baseline")["seeds"] == [0, 1, 2, 3, 4]


def test_trainer_resumes_over_a_torn_summary(tmp_path):
    from freezeout.experiment.config import TrainConfig
    from freezeout.experiment.trainer import train
    from tests.helpers.cifar_files import one_thread

    config = TrainConfig(dataset="digits", depth=10, growth=1, epochs=1, batch_size=700, device="cpu")
    with one_thread():
        summary = train(config, tmp_path)
        (tmp_path / "summary.json").write_text("")  # a non-atomic writer killed mid-write
        again = train(config, tmp_path, resume=True)
    timing = ("train_seconds", "wall_seconds")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in summary.items() if k not in timing}
    assert json.loads((tmp_path / "summary.json").read_text())["finished"] is True
