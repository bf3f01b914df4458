"""A NaN/inf loss: "stop" ends the run naming the step and keeps the last good checkpoint; "skip" drops the
batch without a trace (bit-exact) while the FreezeOut schedule moves on."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import freezeout.experiment.engine as engine
from freezeout.cli import main
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.data.batches import Batches
from freezeout.experiment.engine import NonFiniteLossError
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread
from tests.helpers.nan_inject import plant

ROOT = Path(__file__).resolve().parents[1]
# digits, batch 100: 15 steps per epoch (the last batch partial)
TINY = ["--dataset", "digits", "--depth", "10", "--growth", "2", "--batch-size", "100", "--device", "cpu"]
TINY += ["--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow  # a real process: ~9 s
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = cli("-m", "tests.helpers.nan_inject", "20", "train", *TINY, "--epochs", "3", "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "non-finite loss (nan) at step 20 (epoch 2, batch 5 of 15)" in lines[0], lines[0]
    assert "checkpoint of epoch 1 is kept" in lines[0]
    # the checkpoint on disk when the NaN batch came is the one left: byte for byte, epoch 1, finite
    assert (out / "checkpoint.pt").read_bytes() == (out / "checkpoint.at-nan").read_bytes()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "summary.json").exists()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # the kept checkpoint resumes (no NaN this time) and the run finishes
    r = cli("-m", "freezeout", "train", *TINY, "--epochs", "3", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["skipped_batches"] == 0


def test_huge_lr_stops_in_one_line_writing_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--lr", "1e6", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0] and "(epoch 1, batch" in err[0], err
    assert "no checkpoint was written" in err[0]
    assert not (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("where", ["parameter", "batchnorm"])
def test_stop_catches_non_finite_state_behind_a_finite_loss(tmp_path, monkeypatch, where):
    """An update can overflow a weight (or BatchNorm's running statistics) in the last step of an epoch while
    every loss of that epoch was finite: the epoch must still not be saved."""
    real = engine.Run.train_epoch
    kept = {}

    def last_step_leaves_inf(self, loss_sum, on_step=None):
        result = real(self, loss_sum, on_step)
        if self.sched.step_count == 2 * self.steps_per_epoch:  # epoch 2 done: its loss is already summed
            kept["checkpoint"] = (tmp_path / "checkpoint.pt").read_bytes()
            if where == "parameter":  # the head: it trains to the end, so its weights move every step
                target = self.opt.param_groups[-1]["params"][0]
            else:
                target = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1].running_var
            with torch.no_grad():
                target.view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(engine.Run, "train_epoch", last_step_leaves_inf)
    config = TrainConfig(dataset="digits", depth=10, growth=2, epochs=3, batch_size=100)
    message = (
        r"non-finite parameters or BatchNorm statistics after step 30 \(epoch 2, its last\): training stopped, "
        r"the checkpoint of epoch 1 is kept"
    )
    with pytest.raises(NonFiniteLossError, match=message):
        train(config, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == kept["checkpoint"]  # byte for byte: not rewritten
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (tmp_path / "summary.json").exists()


class Snapshots:
    """The model's state_dict (parameters and BatchNorm statistics), the optimizer's state and the schedule
    as each training batch is drawn: ``at[n]`` is the state after step ``n - 1``."""

    def __init__(self, monkeypatch) -> None:
        self.runs, self.at = [], {}
        runs = self.runs

        class Recorded(engine.Run):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                runs.append(self)

        monkeypatch.setattr(engine, "Run", Recorded)

    def __call__(self, n: int) -> None:
        run = self.runs[-1]
        self.at[n] = (
            copy.deepcopy(run.model.state_dict()),
            copy.deepcopy(run.opt.state_dict()["state"]),
            run.sched.step_count,
            run.sched.get_last_lr(),
        )


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        same_tensors(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a
    )


def test_skip_leaves_no_trace_and_the_schedule_moves_on(tmp_path, monkeypatch):
    snap = Snapshots(monkeypatch)
    monkeypatch.setattr(Batches, "__iter__", plant({17}, snap))  # epoch 2, batch 2
    config = TrainConfig(dataset="digits", depth=10, growth=2, epochs=2, batch_size=100, t0=0.5, nonfinite="skip")
    summary = train(config, tmp_path)
    (model16, opt16, step16, _), (model17, opt17, step17, lr17), (model18, opt18, step18, lr18) = (
        snap.at[16],
        snap.at[17],
        snap.at[18],
    )
    assert same_tensors(model17, model18) and same_tensors(opt17, opt18)  # step 17 changed nothing ...
    assert not same_tensors(model16, model17) and not same_tensors(opt16, opt17)  # ... a normal step does
    assert (step16, step17, step18) == (15, 16, 17) and lr18 != lr17  # ... but it was a step of the schedule
    assert all(torch.isfinite(v).all() for v in model18.values())
    assert summary["finished"] and summary["skipped_batches"] == 1 and summary["total_steps"] == 30
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_batches"] for r in records] == [0, 1]
    assert all(map(torch.isfinite, map(torch.tensor, [r["train_loss"] for r in records])))


def test_skip_gives_up_when_every_batch_of_an_epoch_is_bad(tmp_path, monkeypatch):
    monkeypatch.setattr(Batches, "__iter__", plant(set(range(16, 31))))  # all of epoch 2
    config = TrainConfig(dataset="digits", depth=10, growth=2, epochs=2, batch_size=100, nonfinite="skip")
    with pytest.raises(NonFiniteLossError, match="every batch of epoch 2 had a non-finite loss"):
        train(config, tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "summary.json").exists()


def test_nonfinite_option_is_validated(capsys):
    with pytest.raises(ValueError, match="nonfinite must be one of stop, skip"):
        TrainConfig(nonfinite="ignore").validate()
    with pytest.raises(SystemExit):
        main(["train", "--nonfinite", "ignore", "--out", "x"])
    assert "--nonfinite" in capsys.readouterr().err
