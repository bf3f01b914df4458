"""``freezeout sweep`` and ``freezeout plot`` end to end: a real sweep killed mid-run and resumed, and every
bad input as one line on stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freezeout.cli import main
from freezeout.experiment.lock import LOCK_FILE
from tests.helpers.cifar_files import one_thread, write_cifar
from tests.helpers.cli import one_line_error
from tests.helpers.cli import run as cli

ROOT = Path(__file__).resolve().parents[1]
# the smallest DenseNet-BC on the embedded digits: seconds per run
TINY = ["--dataset", "digits", "--depth", "10", "--growth", "4", "--batch-size", "100", "--device", "cpu"]


def popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "freezeout", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a real sweep killed and resumed: ~6 s
def test_killed_sweep_resumes_and_skips_finished(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--epochs", "6", "--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0"]
    args += ["--out", str(out), "--no-progress"]
    base, frozen = out / "baseline_seed=0", out / "cubic-scaled_t0=0.5_seed=0"
    proc = popen(*args)
    try:
        deadline = time.monotonic() + 240
        while not (frozen / "checkpoint.pt").exists():  # the baseline runs first, then this one
            assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before the kill"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup of any kind
    finally:
        proc.kill()
        proc.wait()
    assert (base / "summary.json").exists() and not (frozen / "summary.json").exists()
    done_at_kill = len(epochs_logged(frozen))
    assert 1 <= done_at_kill < 6
    before = {p: p.stat().st_mtime_ns for p in base.iterdir() if p.name != LOCK_FILE}  # the lock records its holder
    started = (frozen / "config.json").stat().st_mtime_ns

    with one_thread():
        result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert {
        p: p.stat().st_mtime_ns for p in base.iterdir() if p.name != LOCK_FILE
    } == before  # finished run skipped, untouched
    assert (frozen / "config.json").stat().st_mtime_ns == started  # resumed, not started afresh
    assert epochs_logged(frozen) == [1, 2, 3, 4, 5, 6]  # every epoch exactly once
    for run in (base, frozen):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["finished"] is True and summary["epochs"] == 6 and 0 <= summary["test_error"] <= 1
        assert summary["train_seconds"] > 0
    table = json.loads((out / "aggregate.json").read_text())
    assert [r["strategy"] for r in table["rows"]] == ["baseline", "cubic-scaled"]
    assert table["incomplete"] == [] and "cubic-scaled" in result.stdout

    # plots from the sweep's files
    result = cli("plot", "--sweep", str(out), "--out", str(tmp_path / "fig"))
    assert result.returncode == 0, result.stderr
    for name in ("figure1.png", "figure2.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:4] == b"\x89PNG"

    # the same folder with another config is refused, naming the field
    one_line_error(cli(*(a if a != "6" else "7" for a in args)), "different config (epochs: 6 -> 7)")


def test_sweep_on_cifar10_files(tmp_path, capsys):
    data = write_cifar(tmp_path / "c10", "cifar10", packed=True, per_batch=10)
    out = tmp_path / "sweep"
    # the smallest grid the CLI takes: no strategy, no t0, one seed = the baseline alone
    argv = ["sweep", "--dataset", "cifar10", "--data-dir", str(data), "--depth", "10", "--growth", "2"]
    argv += ["--epochs", "1", "--strategies", "--t0", "--seeds", "0", "--device", "cpu", "--out", str(out)]
    with one_thread():
        assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((out / "sweep.json").read_text())["base_config"]["dataset"] == "cifar10"
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["baseline_seed=0"]
    summary = json.loads((out / runs[0] / "summary.json").read_text())
    assert summary["finished"] and summary["config"]["dataset"] == "cifar10"
    assert summary["config"]["data_dir"] == str(data) and summary["num_layers"] == 6
    assert summary["total_steps"] == 1  # 5 x 10 training images in one batch of 50: these files, not digits
    table = json.loads((out / "aggregate.json").read_text())
    assert [r["strategy"] for r in table["rows"]] == ["baseline"] and table["base_config"]["dataset"] == "cifar10"
    assert "baseline" in capsys.readouterr().out


def test_dry_run_prints_the_grid(tmp_path):
    result = cli(
        "sweep", *TINY, "--epochs", "2", "--t0", "0.5", "0.8", "--seeds", "0", "1", "--out", str(tmp_path / "d"),
        "--dry-run", "--timing-steps", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "baseline_seed=1" in result.stdout and "linear-unscaled_t0=0.8_seed=1" in result.stdout
    assert "18 runs, 18 to run, 36 epochs to run" in result.stdout and "estimated time" in result.stdout
    assert not (tmp_path / "d").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--t0"], "t0 list is empty"),
        (["--seeds"], "seeds is empty"),
        (["--t0", "0.5", "1.2"], "t0 must be a number in (0, 1)"),
        (["--t0", "0.5", "1"], "t0 must be a number in (0, 1)"),
        (["--strategies", "cubic"], "invalid choice"),
        (["--depth", "11"], "6n + 4"),
    ],
)
def test_sweep_bad_input(tmp_path, extra, match):
    one_line_error(cli("sweep", *TINY, "--epochs", "1", "--out", str(tmp_path / "s"), *extra), match)
    assert not (tmp_path / "s").exists()


def test_plot_bad_input(tmp_path):
    pytest.importorskip("matplotlib", reason="freezeout plot needs the [plot] extra")
    (tmp_path / "empty" / "half_run").mkdir(parents=True)
    one_line_error(cli("plot", "--sweep", str(tmp_path / "empty"), "--out", str(tmp_path / "f")), "no finished runs")
    one_line_error(cli("plot", "--figure", "2", "--out", str(tmp_path / "f")), "needs --sweep")
    one_line_error(cli("plot", "--sweep", str(tmp_path / "nope"), "--out", str(tmp_path / "f")), "does not exist")
    assert not (tmp_path / "f").exists()
    result = cli("plot", "--figure", "1", "--out", str(tmp_path / "f"))
    assert result.returncode == 0 and (tmp_path / "f" / "figure1.png").read_bytes()[:4] == b"\x89PNG"
