"""``freezeout demo``: the baseline and FreezeOut in lockstep, their saving and its spread, resumed when killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import freezeout.experiment.demo as demo
from freezeout.cli.demo import saving_line
from freezeout.experiment import engine, session
from freezeout.experiment.demo import lockstep_saving, run_demo, table
from tests.helpers.cifar_files import one_thread

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depth": 10, "growth": 2, "batch_size": 100}  # 15 steps per epoch; cubic t0 = 0.8 freezes from step 24


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(demo, "DEMO", {**demo.DEMO, **TINY})
    with one_thread():
        yield


def record(epoch: int, seconds: float, lockstep: bool = True) -> dict:
    return {"epoch": epoch, "epoch_seconds": seconds, "lockstep": lockstep}


def test_saving_is_over_the_epochs_both_timed_in_lockstep():
    base = [record(1, 2.0), record(2, 2.0), record(3, 4.0), record(4, 2.0)]
    frozen = [record(1, 2.0), record(2, 1.0, lockstep=False), record(3, 1.0), record(4, 1.5)]  # 2: timed alone
    got = lockstep_saving(base, frozen, alike={1, 2})
    assert got["epochs"] == [1, 3, 4]
    assert got["saving"] == pytest.approx(1 - 4.5 / 8.0)  # 2 + 1 + 1.5 seconds against 2 + 4 + 2
    assert got["epoch_savings"] == pytest.approx([0.0, 0.75, 0.25])
    assert (got["epoch_saving_min"], got["epoch_saving_median"], got["epoch_saving_max"]) == pytest.approx(
        (0.0, 0.25, 0.75)
    )
    assert got["alike_epochs"] == [1] and got["alike_savings"] == [0.0]  # epoch 2 was not in lockstep
    assert got["saving_noise"] is None  # one alike epoch: no spread to tell
    none = lockstep_saving([record(1, 1.0, False)], [record(1, 1.0)])
    assert none["saving"] is None and none["epochs"] == [] and none["epoch_saving_median"] is None


def test_the_savings_noise_is_the_alike_epochs_spread_carried_to_the_sums():
    base = [record(e, 2.0) for e in range(1, 5)]
    # alike epochs 1-2 differ by +-2 % (true saving 0); 3-4 save half
    frozen = [record(1, 2.04), record(2, 1.96), record(3, 1.0), record(4, 1.0)]
    got = lockstep_saving(base, frozen, alike={1, 2})
    assert got["alike_savings"] == pytest.approx([-0.02, 0.02])
    assert "saving 25.0% of training time (the timing's noise alone: ± 1.4 pp)," in saving_line(got, 4)
    # spread: the two savings' sample standard deviation, 0.02 * sqrt(2); four equal epochs: / sqrt(4)
    assert got["saving_noise"] == pytest.approx(0.02 * 2**0.5 / 2)
    uneven = lockstep_saving(
        [record(1, 1.0), record(2, 1.0), record(3, 2.0)], [record(1, 1.02), record(2, 0.98), record(3, 1.0)], {1, 2}
    )
    assert uneven["saving_noise"] == pytest.approx(0.02 * 2**0.5 * 6**0.5 / 4)  # sqrt(1 + 1 + 4) / (1 + 1 + 2)


def test_table_and_saving_line():
    runs = {
        name: {"test_accuracy": acc, "config": {"schedule": "cubic", "t0": t0}}
        for name, acc, t0 in (("baseline", 0.95, 1.0), ("freezeout", 0.94, 0.8))
    }
    lock = lockstep_saving([record(1, 5.0), record(2, 5.0)], [record(1, 5.0), record(2, 2.5)], alike={1})
    rows = table({"runs": runs, "lockstep": lock}).splitlines()
    assert len(rows) == 3 and "t0=0.8" in rows[2]
    assert rows[1].split()[-3:] == ["10.0", "-", "95.00%"] and rows[2].split()[-3:] == ["7.5", "25.0%", "94.00%"]
    line = saving_line(lock, 2)
    assert line.startswith("saving 25.0% of training time, the runs' steps in lockstep")  # 1 alike epoch: no ±
    assert "over 2 of 2 epochs" in line and "0.0% to 50.0%" in line
    assert "in the 1 epoch before the first freeze" in line


def test_steps_interleave_and_evaluation_is_outside_the_timing(tmp_path, tiny, monkeypatch, capsys):
    order = []
    real_steps, real_eval = engine.Run.epoch_steps, session.evaluate

    def spy(self, loss_sum):
        for _ in real_steps(self, loss_sum):
            order.append((self.config.t0, self.sched.step_count))
            yield

    real_clock, skipped = time.perf_counter, [0.0]

    def slow_evaluate(*args, **kwargs):
        skipped[0] += 1000.0  # an evaluation that takes 1000 s of the clock: were it timed, an epoch would hold it
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    monkeypatch.setattr(engine.Run, "epoch_steps", spy)
    monkeypatch.setattr(session, "evaluate", slow_evaluate)
    result = run_demo(tmp_path, 2, 0, progress=True)
    err = capsys.readouterr().err  # not a terminal: no bar, a line per epoch
    assert "\r" not in err and [x.split(":")[0] for x in err.splitlines()] == ["epoch 1/2", "epoch 2/2"], err
    assert len(order) == 2 * 30
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    for s, pair in enumerate(pairs):  # step s + 1 of both, before step s + 2 of either
        assert {t0 for t0, _ in pair} == {1.0, 0.8} and {step for _, step in pair} == {s + 1}
    assert pairs[0][0][0] != pairs[1][0][0]  # the order rotates: neither always goes first
    for name in ("baseline", "freezeout"):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["lockstep"] for r in lines] == [True, True]
        assert all(r["eval_seconds"] >= 1000 > r["epoch_seconds"] for r in lines), lines  # however loaded the machine
        assert result["lockstep"][f"{name}_seconds"] == [r["epoch_seconds"] for r in lines]
    assert result["lockstep"]["alike_epochs"] == [1]  # steps 0-14 of 30: before the first freeze at 0.512
    assert json.loads((tmp_path / "demo.json").read_text()) == result and result["finished"] is True


def test_a_run_left_behind_catches_up_alone_then_lockstep_resumes(tmp_path, tiny, monkeypatch):
    real_save, saves = session.atomic_torch_save, []

    def die_at_second_checkpoint(path, obj):
        saves.append(path.parent.name)
        if len(saves) == 2:  # the baseline's checkpoint of epoch 1 is written, FreezeOut's is not
            raise KeyboardInterrupt
        real_save(path, obj)

    monkeypatch.setattr(session, "atomic_torch_save", die_at_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, 3, 0)
    assert saves == ["baseline", "freezeout"]
    assert json.loads((tmp_path / "demo.json").read_text())["finished"] is False  # the folder's kind, from the start
    monkeypatch.setattr(session, "atomic_torch_save", real_save)
    lines = []
    result = run_demo(tmp_path, 3, 0, notify=lines.append)
    assert any("freezeout catches up epoch 1 alone" in x for x in lines), lines
    frozen = [json.loads(x) for x in (tmp_path / "freezeout" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["lockstep"]) for r in frozen] == [(1, False), (2, True), (3, True)]
    assert result["lockstep"]["epochs"] == [2, 3]  # epoch 1's pair was not timed together
    again = run_demo(tmp_path, 3, 0)  # finished: read back, nothing trained
    assert again["runs"] == result["runs"] and again["lockstep"] == result["lockstep"]


@pytest.mark.slow  # the real demo's model for an epoch, in a process of its own: ~8 s
def test_a_real_demo_writes_epoch_lines_and_no_carriage_returns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "freezeout", "demo", "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr  # stderr is a pipe here: no bar, only the epoch's line
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("epoch 1/1: baseline loss ") and "| freezeout loss " in line and "| saving " in line
    result = json.loads((out / "demo.json").read_text())
    assert table(result) in r.stdout and saving_line(result["lockstep"], 1) in r.stdout
    frozen = result["runs"]["freezeout"]
    assert (frozen["config"]["schedule"], frozen["config"]["scale_lr"], frozen["config"]["t0"]) == ("cubic", True, 0.8)
    assert frozen["num_frozen"] == frozen["num_layers"] and result["runs"]["baseline"]["num_frozen"] == 0
