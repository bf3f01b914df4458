"""The study's comparison with training shorter: shortened baselines in the grid, the equal-time interpolation
against hand computations, the metric of a language-model sweep, the table and the figure, and a sweep in lockstep
that computes exactly what the same sweep computes run by run."""

from __future__ import annotations

import csv
import json
import math

import pytest

from freezeout.cli import main
from freezeout.experiment.aggregate import aggregate, columns, write_aggregate
from freezeout.experiment.equal_time import interpolate
from freezeout.experiment.sweep import Grid, check_shorter, expand, run_config
from freezeout.experiment.tables import markdown_table
from tests.helpers.cifar_files import one_thread

BASE = {"dataset": "digits", "model": "densenet-bc", "depth": 10, "growth": 4, "epochs": 20, "batch_size": 50}


def test_shortened_baselines_in_the_grid():
    runs = expand(Grid(("cubic-scaled",), (0.8,), (0, 1), (0.5, 0.75)))
    names = [r.name for r in runs]
    assert names == ["baseline_seed=0", "baseline_seed=1", "shorter_f=0.5_seed=0", "shorter_f=0.75_seed=0",
                     "shorter_f=0.5_seed=1", "shorter_f=0.75_seed=1", "cubic-scaled_t0=0.8_seed=0",
                     "cubic-scaled_t0=0.8_seed=1"]  # fmt: skip
    short = runs[3]
    assert short.baseline and short.fraction == 0.75
    config = run_config(BASE, short)
    assert config["epochs"] == 15 and config["t0"] == 1.0 and config["seed"] == 0
    assert run_config(BASE, runs[0])["epochs"] == 20 and run_config(BASE, runs[-1])["epochs"] == 20
    check_shorter(BASE, Grid((), (), (0,), (0.5, 0.65, 0.9)))  # 10, 13, 18 epochs
    with pytest.raises(ValueError, match=r"0\.33 of 20 epochs is not a whole number"):
        check_shorter(BASE, Grid((), (), (0,), (0.33,)))
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="shorter must be a number in \\(0, 1\\)"):
            Grid((), (), (0,), (bad,)).validate()
    assert Grid((), (), (0,)).to_dict() == {"strategies": [], "t0s": [], "seeds": [0]}  # sweep.json as before


def test_interpolation_is_piecewise_linear_and_never_extrapolates():
    curve = [(1.0, 0.10), (0.5, 0.30), (0.75, 0.20)]  # in any order
    assert interpolate(curve, 0.8) == pytest.approx(0.20 + (0.10 - 0.20) * (0.8 - 0.75) / 0.25)
    assert interpolate(curve, 0.6) == pytest.approx(0.30 - 0.10 * 0.1 / 0.25)
    assert interpolate(curve, 0.75) == pytest.approx(0.20) and interpolate(curve, 1.0) == pytest.approx(0.10)
    for x in (0.49, 1.01, float("nan")):
        assert math.isnan(interpolate(curve, x))
    assert math.isnan(interpolate([(1.0, 0.1)], 1.0))


def write_run(root, name, t0, seed, value, seconds, epochs=20, metric="test_error", schedule="cubic", scale=True):
    """A finished run's summary as the trainer writes it, with the base config of the sweep in ``root``."""
    base = json.loads((root / "sweep.json").read_text())["base_config"]
    config = {**base, "schedule": schedule, "scale_lr": scale, "t0": t0, "seed": seed, "epochs": epochs}
    (root / name).mkdir(parents=True)
    summary = {"config": config, metric: value, "train_seconds": seconds, "finished": True}
    (root / name / "summary.json").write_text(json.dumps(summary))


def make_sweep(root, base=BASE):
    (root / "sweep.json").write_text(json.dumps({"version": 1, "base_config": base, "grid": {}}))
    return root


@pytest.fixture
def short_sweep(tmp_path):
    """Seed 0: baseline (error 0.10, 100 s), shortened to 1/2 (0.30) and 3/4 (0.20); FreezeOut runs at 80 s
    (0.15) and at 40 s, shorter than the shortest baseline (0.40). Seed 1: baseline and one run, no curve."""
    root = make_sweep(tmp_path)
    write_run(root, "baseline_seed=0", 1.0, 0, 0.10, 100.0)
    write_run(root, "shorter_f=0.5_seed=0", 1.0, 0, 0.30, 51.0, epochs=10)
    write_run(root, "shorter_f=0.75_seed=0", 1.0, 0, 0.20, 74.0, epochs=15)
    write_run(root, "shorter_f=0.75_seed=1", 1.0, 1, 0.20, 74.0, epochs=14)  # copied in: 14 epochs is not 3/4
    write_run(root, "cubic-scaled_t0=0.8_seed=0", 0.8, 0, 0.15, 80.0)
    write_run(root, "cubic-scaled_t0=0.5_seed=0", 0.5, 0, 0.40, 40.0)
    write_run(root, "baseline_seed=1", 1.0, 1, 0.12, 90.0)
    write_run(root, "cubic-scaled_t0=0.8_seed=1", 0.8, 1, 0.13, 72.0)
    return root


def test_every_freezeout_run_meets_the_shorter_baseline_of_its_seed_and_time(short_sweep):
    table = aggregate(short_sweep, paper=False)
    assert table["incomplete"] == ["shorter_f=0.75_seed=1"] and table["metric"] == "test_error"
    runs = {r["name"]: r for r in table["runs"]}
    run = runs["cubic-scaled_t0=0.8_seed=0"]
    assert run["time_ratio"] == pytest.approx(0.8)
    assert run["equal_time"] == pytest.approx(0.18)  # 0.20 + (0.10 - 0.20) x (0.80 - 0.75) / 0.25, by hand
    assert run["vs_equal_time"] == pytest.approx(0.15 - 0.18)
    assert math.isnan(runs["cubic-scaled_t0=0.5_seed=0"]["equal_time"])  # 0.4 of the time: below the curve
    assert math.isnan(runs["cubic-scaled_t0=0.8_seed=1"]["equal_time"])  # seed 1 has no shortened baseline
    rows = {(r["strategy"], r["t0"], r["fraction"]): r for r in table["rows"]}
    assert list(rows)[:3] == [("baseline", 1.0, 1.0), ("shorter", 1.0, 0.5), ("shorter", 1.0, 0.75)]
    half = rows["shorter", 1.0, 0.5]
    assert half["time_ratio_mean"] == pytest.approx(0.51) and half["paper_speedup"] == pytest.approx(0.5)
    assert half["test_error_mean"] == pytest.approx(0.30) and half["error_increase_mean"] == pytest.approx(0.20)
    cubic = rows["cubic-scaled", 0.8, 1.0]
    assert cubic["n"] == 2 and cubic["equal_time_mean"] == pytest.approx(0.18) and math.isnan(cubic["equal_time_std"])
    assert cubic["vs_equal_time_mean"] == pytest.approx(-0.03)


def test_a_language_model_sweep_compares_bits_per_byte(tmp_path):
    base = {**BASE, "dataset": "pystdlib", "model": "gpt", "depth": 2, "growth": 32}
    root = make_sweep(tmp_path, base)
    write_run(root, "baseline_seed=0", 1.0, 0, 3.0, 100.0, metric="test_bpb")
    write_run(root, "shorter_f=0.5_seed=0", 1.0, 0, 3.6, 50.0, epochs=10, metric="test_bpb")
    write_run(root, "linear-unscaled_t0=0.5_seed=0", 0.5, 0, 3.2, 75.0, metric="test_bpb", schedule="linear",
              scale=False)  # fmt: skip
    table = aggregate(root, paper=False)
    assert table["metric"] == "test_bpb"
    row = {r["strategy"]: r for r in table["rows"]}["linear-unscaled"]
    assert row["test_bpb_mean"] == pytest.approx(3.2) and row["rel_error_mean"] == pytest.approx(0.2 / 3.0)
    assert row["equal_time_mean"] == pytest.approx(3.3) and row["vs_equal_time_mean"] == pytest.approx(-0.1)
    csv_path, _ = write_aggregate(table, tmp_path / "out")
    header = next(csv.reader(csv_path.read_text().splitlines()))
    assert tuple(header) == columns("test_bpb") and "test_bpb_mean" in header and "test_error_mean" not in header
    md = (tmp_path / "out" / "aggregate.md").read_text().splitlines()
    assert "bits per byte" in md[0] and len(md) == 2 + 3
    assert "| linear-unscaled | 0.5 | 100% | 1 | 3.200 | 25.0 | +0.200 | +6.7 | 3.300 | -0.100 |" in md


def test_the_table_and_the_figure_carry_the_equal_time_curve(short_sweep, tmp_path):
    pytest.importorskip("matplotlib", reason="freezeout plot needs the [plot] extra")
    from freezeout.experiment.plot import figure2_data, plot_figure2

    table = aggregate(short_sweep, paper=False)
    data = figure2_data(table)
    assert data["shorter"]["speedup"] == pytest.approx([0.0, 25.0, 50.0])  # 1 - fraction, in percent
    assert data["shorter"]["error"] == pytest.approx([11.0, 20.0, 30.0])  # the baseline's mean over both seeds
    md = markdown_table(table)
    assert (
        "| cubic-scaled | 0.8 | 100% | 2 | 14.00 ± 1.41 | 20.0 ± 0.0 | +3.00 ± 2.83 | +29.2 ± 29.5 | 18.00 | -3.00 |"
        in md
    )
    assert plot_figure2(tmp_path / "f.png", table).read_bytes()[:4] == b"\x89PNG"


def run_files(root):
    """Each run's metrics lines without their timings: what a run computed."""
    out = {}
    for path in sorted(root.glob("*/metrics.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        out[path.parent.name] = [{k: v for k, v in r.items() if "seconds" not in k and k != "lockstep"} for r in lines]
    return out


def test_a_sweep_in_lockstep_computes_what_a_sweep_run_by_run_computes(tmp_path, capsys):
    args = ["--dataset", "digits", "--model", "resnet", "--depth", "8", "--growth", "2", "--epochs", "2",
            "--batch-size", "500", "--device", "cpu", "--no-progress", "--strategies", "cubic-scaled",
            "--t0", "0.5", "--seeds", "0", "--shorter", "0.5"]  # fmt: skip
    with one_thread():
        assert main(["sweep", *args, "--out", str(tmp_path / "alone")]) == 0
        assert main(["sweep", *args, "--lockstep", "--out", str(tmp_path / "together")]) == 0
    alone, together = run_files(tmp_path / "alone"), run_files(tmp_path / "together")
    assert sorted(together) == ["baseline_seed=0", "cubic-scaled_t0=0.5_seed=0", "shorter_f=0.5_seed=0"]
    assert together == alone  # the same computation, bit for bit: only the timing differs
    assert len(together["shorter_f=0.5_seed=0"]) == 1 and len(together["baseline_seed=0"]) == 2
    lines = (tmp_path / "together" / "baseline_seed=0" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["lockstep"] is True for line in lines)
    assert "vs equal time" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "together").rglob("summary.json")}
    with one_thread():
        assert main(["sweep", *args, "--lockstep", "--out", str(tmp_path / "together")]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "together").rglob("summary.json")} == before  # read back


def test_a_shortened_baseline_of_part_of_an_epoch_is_one_line(tmp_path, capsys):
    args = ["sweep", "--dataset", "digits", "--epochs", "3", "--shorter", "0.5", "--out", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.5 of 3 epochs is not a whole number of epochs" in err[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # three small sweeps: seconds
def test_a_sweep_in_lockstep_resumes_with_the_runs_behind_catching_up_alone(tmp_path, monkeypatch):
    from freezeout.experiment.session import Session

    args = ["--dataset", "digits", "--model", "resnet", "--depth", "8", "--growth", "2", "--epochs", "2",
            "--batch-size", "500", "--device", "cpu", "--no-progress", "--strategies", "linear-unscaled",
            "--t0", "0.5", "--seeds", "0", "--shorter", "0.5", "--lockstep"]  # fmt: skip
    real_end, ends = Session.end_epoch, []

    def end_then_stop(self, *a, **kw):  # the first run's first epoch is written, then the process is killed
        if ends:
            raise KeyboardInterrupt
        ends.append(self.out.name)
        return real_end(self, *a, **kw)

    with one_thread():
        assert main(["sweep", *args, "--out", str(tmp_path / "once")]) == 0
        monkeypatch.setattr(Session, "end_epoch", end_then_stop)
        assert main(["sweep", *args, "--out", str(tmp_path / "twice")]) == 130
        monkeypatch.setattr(Session, "end_epoch", real_end)
        assert main(["sweep", *args, "--out", str(tmp_path / "twice")]) == 0
    assert ends == ["baseline_seed=0"]
    assert run_files(tmp_path / "twice") == run_files(tmp_path / "once")  # resumed and caught up: the same numbers
    caught_up = (tmp_path / "twice" / "linear-unscaled_t0=0.5_seed=0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["lockstep"] for line in caught_up] == [False, True]  # epoch 1 alone, then together


def write_epochs(root, name, seconds, lockstep=True):
    lines = [{"epoch": e, "epoch_seconds": s, "lockstep": lockstep} for e, s in enumerate(seconds, 1)]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_lockstep_times_compare_epoch_by_epoch(tmp_path):
    """The machine ran the second epoch three times slower: the totals would weigh it three times, the epoch by
    epoch ratio weighs both alike; the shortened baseline, absent from the slow epoch, measures its fraction."""
    root = make_sweep(tmp_path, {**BASE, "epochs": 2})
    write_run(root, "baseline_seed=0", 1.0, 0, 0.10, 4.0, epochs=2)
    write_epochs(root, "baseline_seed=0", [1.0, 3.0])
    write_run(root, "shorter_f=0.5_seed=0", 1.0, 0, 0.30, 1.0, epochs=1)
    write_epochs(root, "shorter_f=0.5_seed=0", [1.0])
    write_run(root, "cubic-scaled_t0=0.5_seed=0", 0.5, 0, 0.20, 3.5, epochs=2)
    write_epochs(root, "cubic-scaled_t0=0.5_seed=0", [0.5, 3.0])
    write_run(root, "cubic-scaled_t0=0.8_seed=0", 0.8, 0, 0.20, 3.5, epochs=2)
    write_epochs(root, "cubic-scaled_t0=0.8_seed=0", [0.5, 3.0], lockstep=False)  # timed alone: the totals
    runs = {r["name"]: r for r in aggregate(root, paper=False)["runs"]}
    assert runs["shorter_f=0.5_seed=0"]["time_ratio"] == pytest.approx(0.5)  # (1 / 1 + 0) / 2; totals: 0.25
    assert runs["cubic-scaled_t0=0.5_seed=0"]["time_ratio"] == pytest.approx((0.5 / 1 + 3 / 3) / 2)  # totals: 0.875
    assert runs["cubic-scaled_t0=0.8_seed=0"]["time_ratio"] == pytest.approx(3.5 / 4)
    assert "epoch_seconds" not in runs["baseline_seed=0"]  # used, then dropped from the table's files
