"""Aggregation maths against hand-made summaries, and the paper's FLOP estimate against closed forms."""

from __future__ import annotations

import csv
import json
import math

import pytest

from freezeout.experiment.aggregate import aggregate, mean_std, write_aggregate

BASE = {"dataset": "digits", "model": "densenet-bc", "depth": 10, "growth": 4, "epochs": 2, "batch_size": 50}


def write_run(root, name, schedule, scale_lr, t0, seed, error, seconds, finished=True):
    d = root / name
    d.mkdir(parents=True)
    config = {**BASE, "schedule": schedule, "scale_lr": scale_lr, "t0": t0, "seed": seed}
    summary = {"config": config, "test_error": error, "train_seconds": seconds, "finished": finished}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def sweep_dir(tmp_path):
    """Two baselines, a strategy with 3 seeds (seed 2 has no baseline), one with a single seed, and three
    runs that did not finish (absurd numbers, so that any leak into a mean shows)."""
    (tmp_path / "sweep.json").write_text(json.dumps({"version": 1, "base_config": BASE, "grid": {}}))
    write_run(tmp_path, "baseline_seed=0", "cubic", True, 1.0, 0, 0.10, 100.0)
    write_run(tmp_path, "baseline_seed=1", "cubic", True, 1.0, 1, 0.20, 80.0)
    write_run(tmp_path, "cubic-scaled_t0=0.5_seed=0", "cubic", True, 0.5, 0, 0.11, 70.0)
    write_run(tmp_path, "cubic-scaled_t0=0.5_seed=1", "cubic", True, 0.5, 1, 0.23, 60.0)
    write_run(tmp_path, "cubic-scaled_t0=0.5_seed=2", "cubic", True, 0.5, 2, 0.50, 1.0)
    write_run(tmp_path, "linear-unscaled_t0=0.8_seed=0", "linear", False, 0.8, 0, 0.09, 90.0)
    write_run(tmp_path, "linear-unscaled_t0=0.8_seed=1", "linear", False, 0.8, 1, 9.0, 1e6, finished=False)
    (
        write_run(tmp_path, "linear-unscaled_t0=0.5_seed=0", "linear", False, 0.5, 0, 9.0, 1e6) / "summary.json"
    ).write_text('{"config": {"t0": 0.5')
    (tmp_path / "linear-unscaled_t0=0.5_seed=1").mkdir()
    (tmp_path / "linear-unscaled_t0=0.5_seed=1" / "checkpoint.pt").write_bytes(b"x")
    return tmp_path


def test_mean_std():
    assert mean_std([1.0, 2.0, 4.0]) == (
        pytest.approx(7 / 3),
        pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)),
    )
    m, s = mean_std([0.3])
    assert m == 0.3 and math.isnan(s)
    assert all(math.isnan(v) for v in mean_std([]))


def test_table_maths(sweep_dir):
    table = aggregate(sweep_dir)
    assert sorted(table["incomplete"]) == [
        "linear-unscaled_t0=0.5_seed=0",
        "linear-unscaled_t0=0.5_seed=1",
        "linear-unscaled_t0=0.8_seed=1",
    ]
    rows = {(r["strategy"], r["t0"]): r for r in table["rows"]}
    assert list(rows) == [("baseline", 1.0), ("cubic-scaled", 0.5), ("linear-unscaled", 0.8)]

    base = rows["baseline", 1.0]
    assert base["n"] == 2 and base["test_error_mean"] == pytest.approx(0.15)
    assert base["test_error_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert base["speedup_mean"] == 0 and base["speedup_std"] == 0 and base["rel_error_mean"] == 0
    assert base["paper_speedup"] == pytest.approx(0.0)

    cubic = rows["cubic-scaled", 0.5]
    assert cubic["n"] == 3 and cubic["seeds"] == [0, 1, 2]
    errors = [0.11, 0.23, 0.50]  # all finished seeds
    mean = sum(errors) / 3
    assert cubic["test_error_mean"] == pytest.approx(mean)
    assert cubic["test_error_std"] == pytest.approx(math.sqrt(sum((e - mean) ** 2 for e in errors) / 2))
    # speedup and relative error only where the seed has a baseline: seeds 0 and 1
    assert cubic["speedup_mean"] == pytest.approx(((1 - 70 / 100) + (1 - 60 / 80)) / 2)  # 0.30, 0.25
    assert cubic["speedup_std"] == pytest.approx(0.05 / math.sqrt(2))
    assert cubic["time_ratio_mean"] == pytest.approx((0.70 + 0.75) / 2)
    assert cubic["time_ratio_std"] == pytest.approx(0.05 / math.sqrt(2))
    assert cubic["rel_error_mean"] == pytest.approx((0.1 + 0.15) / 2)  # (0.11-0.1)/0.1, (0.23-0.2)/0.2
    assert cubic["rel_error_std"] == pytest.approx(0.05 / math.sqrt(2))
    assert cubic["error_increase_mean"] == pytest.approx((0.01 + 0.03) / 2)
    assert cubic["error_increase_std"] == pytest.approx(0.02 / math.sqrt(2))

    linear = rows["linear-unscaled", 0.8]
    assert linear["n"] == 1 and linear["test_error_mean"] == 0.09 and math.isnan(linear["test_error_std"])
    assert linear["speedup_mean"] == pytest.approx(0.1) and linear["rel_error_mean"] == pytest.approx(-0.1)
    assert math.isnan(linear["speedup_std"])
    # the paper's estimate: positive, larger for the earlier and cubed freeze times
    assert 0 < linear["paper_speedup"] < cubic["paper_speedup"] < 0.5


def test_written_files(sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    table = aggregate(sweep_dir, paper=False)
    csv_path, json_path = write_aggregate(table, out)
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [r["strategy"] for r in rows] == ["baseline", "cubic-scaled", "linear-unscaled"]
    assert float(rows[1]["speedup_mean"]) == pytest.approx(0.275) and rows[1]["seeds"] == "0 1 2"
    assert rows[2]["test_error_std"] == "nan"
    data = json.loads(json_path.read_text())  # strict JSON: NaN written as null
    assert data["rows"][2]["test_error_std"] is None and len(data["runs"]) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_no_finished_runs(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no finished runs"):
        aggregate(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        aggregate(tmp_path / "missing")


def test_a_perfect_baseline_keeps_the_speedup_and_the_absolute_error(tmp_path):
    """A baseline with zero test error (small data sets) leaves the relative error undefined, nothing else."""
    (tmp_path / "sweep.json").write_text(json.dumps({"version": 1, "base_config": BASE, "grid": {}}))
    write_run(tmp_path, "baseline_seed=0", "cubic", True, 1.0, 0, 0.0, 50.0)
    write_run(tmp_path, "cubic-scaled_t0=0.8_seed=0", "cubic", True, 0.8, 0, 0.02, 40.0)
    row = {r["strategy"]: r for r in aggregate(tmp_path, paper=False)["rows"]}["cubic-scaled"]
    assert row["speedup_mean"] == pytest.approx(0.2) and row["error_increase_mean"] == pytest.approx(0.02)
    assert math.isnan(row["rel_error_mean"])
