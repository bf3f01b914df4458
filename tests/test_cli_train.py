"""``freezeout train`` from the command line, including every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from freezeout.cli import main
from freezeout.experiment.lock import LOCK_FILE as LOCK
from tests.helpers.cifar_files import ARCHIVE, one_thread, write_cifar
from tests.helpers.models import METRIC_KEYS, RUN_FILES, SUMMARY_KEYS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--depth", "10", "--growth", "2", "--epochs", "1", "--batch-size", "10", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "freezeout", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(root / "c10", "cifar10", packed=True)
    write_cifar(root / "c100", "cifar100", packed=False)
    (root / "empty").mkdir()
    (root / "bad").mkdir()
    raw = (root / "c10" / ARCHIVE["cifar10"]).read_bytes()
    (root / "bad" / ARCHIVE["cifar10"]).write_bytes(raw[: len(raw) // 3])
    return root


def test_one_epoch_run_writes_metrics_and_summary(data, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--dataset", "cifar10", "--data-dir", data / "c10", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and len(r.stdout.strip().splitlines()) == 3
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and set(records[0]) >= METRIC_KEYS
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS and summary["total_steps"] == 10 and summary["finished"]
    assert summary["config"]["dataset"] == "cifar10" and summary["config"]["depth"] == 10
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


def test_cifar100_and_flags_reach_the_config(data, tmp_path):
    args = ["--dataset", "cifar100", "--data-dir", data / "c100", *TINY, "--out", tmp_path]
    flags = ["--schedule", "linear", "--no-scale-lr", "--t0", "0.5", "--lr", "0.05", "--seed", "3", "--val-split", "10"]
    assert main(["train", *map(str, args), *flags]) == 0
    c = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert (c["schedule"], c["scale_lr"], c["t0"], c["lr"], c["seed"], c["val_split"]) == (
        "linear",
        False,
        0.5,
        0.05,
        3,
        10,
    )


def one_line_error(capsys, argv, word):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert word.lower() in err.lower(), err


@pytest.mark.parametrize(
    "args, word",
    [
        (["--dataset", "cifar10", "--data-dir", "{data}/nope"], "does not exist"),
        (["--dataset", "cifar10", "--data-dir", "{data}/empty"], "is empty"),
        (["--dataset", "cifar10"], "error: --data-dir is required for cifar10"),  # flags, not Python's field names
        (["--dataset", "cifar10", "--data-dir", "{data}/bad"], "corrupt or truncated"),
        (["--dataset", "cifar100", "--data-dir", "{data}/c10"], "holds CIFAR-10, not CIFAR-100"),
        (["--dataset", "cifar10", "--data-dir", "{data}/c100"], "holds CIFAR-100, not CIFAR-10"),
        (["--depth", "12"], "6n + 4"),
        (["--growth", "0"], "--growth"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--t0", "0"], "(0, 1]"),
        (["--t0", "1.5"], "(0, 1]"),
        (
            ["--out", "{data}/c10/cifar-10-python.tar.gz/run"],
            "error: --out {data}/c10/cifar-10-python.tar.gz/run is not",
        ),
        (["--lr", "-1"], "error: --lr must be a positive number, got -1.0"),  # no "(0, 3.40282e+38]"
        (["--lr", "nan"], "error: --lr must be a positive number, got nan"),
        (["--lr", "1e39"], "error: --lr must be a positive number that float32 can hold (at most 3.4e38)"),
        (["--weight-decay", "-1"], "error: --weight-decay must be a number >= 0, got -1.0"),
        (["--val-split", "100000"], "error: --val-split must be an integer in [0, 1496]"),
        (
            ["--cache"],
            "error: --cache needs inputs that repeat: digits is augmented (random crops) every epoch, so "
            "turn augmentation off (--no-augment)",
        ),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys, args, word):
    out = tmp_path / "out"
    argv = ["train", *TINY, "--out", str(out), *[a.format(data=data) for a in args]]
    one_line_error(capsys, argv, word.format(data=data))
    assert not out.exists()


def test_resume_with_other_config_leaves_the_run_alone(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(data / "c10"), *TINY, "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # as if killed after the last checkpoint
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK}  # the lock records its holder
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(data / "c10"), *TINY, "--out", str(out)]
    one_line_error(capsys, [*argv, "--t0", "0.6", "--resume"], "t0: 0.8 -> 0.6")
    one_line_error(capsys, argv, "already holds a train run")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK} == before
    assert main([*argv, "--resume"]) == 0 and (out / "summary.json").exists()


def test_bad_input_in_a_real_process(data, tmp_path):
    for args in (["--depth", "11"], ["--dataset", "cifar100", "--data-dir", data / "bad"]):
        r = cli("train", *TINY, "--out", tmp_path / "out", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "out").exists()
