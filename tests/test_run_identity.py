"""Run files honour the umask, and a run is recognised by what decides its numbers, however it was spelt:
``--data-dir data``, ``data/`` or its absolute path from any working folder, ``--device cpu`` for ``auto``."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from freezeout.cli import main
from freezeout.experiment.config import TrainConfig, config_differences
from freezeout.experiment.recover import ResumeError
from freezeout.experiment.sweep import Grid, prepare_sweep_dir, run_sweep
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread, write_cifar
from tests.helpers.sweep_fakes import FakeTrainer

TINY = ["--depth", "10", "--growth", "1", "--epochs", "1", "--batch-size", "10", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_of_a_run_has_the_umask_s_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train(TrainConfig(dataset="digits", depth=10, growth=1, epochs=1, batch_size=100, device="cpu"), tmp_path)
    finally:
        os.umask(old)
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(files) == {".freezeout.lock", "checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"}
    assert files == dict.fromkeys(files, mode)


def test_paths_and_auto_that_name_the_same_run_are_not_differences(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    cifar = {"dataset": "cifar10", "data_dir": "data"}
    for spelling in ("data/", "./data", str(tmp_path / "data"), "../" + tmp_path.name + "/data"):
        assert config_differences(cifar, {**cifar, "data_dir": spelling}) == [], spelling
    assert config_differences(cifar, {**cifar, "data_dir": "other"}) == [
        f"data_dir: 'data' ({tmp_path / 'data'}) -> 'other' ({tmp_path / 'other'})"
    ]
    # the embedded digits read no folder: a data_dir given or not changes nothing
    assert config_differences({"dataset": "digits"}, {"dataset": "digits", "data_dir": "x"}) == []
    # auto is the device the run used; as written, auto is auto wherever it resumes
    assert config_differences({"device": "auto"}, {"device": "cpu"}, saved_device="cpu") == []
    assert config_differences({"device": "auto"}, {"device": "cuda:1"}, saved_device="cuda:0") == []
    assert config_differences({"device": "auto"}, {"device": "auto"}, saved_device="cuda", new_device="cpu") == []
    assert config_differences({"device": "auto", "lr": 0.1}, {"device": "cpu", "lr": 0.2}, saved_device="cuda") == [
        "lr: 0.1 -> 0.2",
        "device: 'auto' (cuda) -> 'cpu'",
    ]  # only what really differs, in the config's order


def test_resume_from_another_working_folder_and_with_cpu_for_auto(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    write_cifar(first / "data", "cifar10", packed=True)
    second.mkdir()
    monkeypatch.chdir(first)
    assert main(["train", "--dataset", "cifar10", "--data-dir", "data", *TINY, "--out", "run"]) == 0
    run = first / "run"
    assert json.loads((run / "config.json").read_text())["config"]["data_dir"] == str(first / "data")
    assert json.loads((run / "summary.json").read_text())["config"]["device"] == "auto"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    monkeypatch.chdir(second)
    again = ["train", "--dataset", "cifar10", "--data-dir", "../first/data/", *TINY, "--out", str(run)]
    again += ["--device", str(torch.load(run / "checkpoint.pt", weights_only=True)["device"])]  # what auto was
    assert main([*again, "--resume"]) == 0, capsys.readouterr().err
    assert main([*again, "--resume"]) == 0  # finished: read back, compared the same way
    assert main([*again, "--resume", "--lr", "0.2"]) == 2
    refusal = "it was run with a different config (lr: 0.1 -> 0.2); a run continues only with the config it started "
    assert capsys.readouterr().err.strip().endswith(refusal + "with: for the new one, choose another --out")


def test_a_run_folder_written_before_paths_were_resolved_still_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "data", "cifar10", packed=True)
    config = TrainConfig(dataset="cifar10", data_dir="data", depth=10, growth=1, epochs=1, batch_size=10)
    train(config, "run")
    ckpt = torch.load("run/checkpoint.pt", weights_only=True)
    ckpt["config"]["data_dir"] = "data/"  # as an older version wrote it: raw, and no "device"
    del ckpt["device"]
    torch.save(ckpt, "run/checkpoint.pt")
    os.unlink("run/summary.json")
    assert train(config, "run", resume=True)["finished"]
    with pytest.raises(ResumeError, match=r"different config \(data_dir: "):
        os.unlink("run/summary.json")
        train(TrainConfig(**{**config.to_dict(), "data_dir": str(tmp_path)}), "run", resume=True)


def test_a_sweep_accepts_its_config_spelt_otherwise_and_skips_its_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"dataset": "cifar10", "data_dir": "data", "depth": 10, "growth": 1, "epochs": 1, "device": "auto"}
    grid = Grid(("cubic-scaled",), (0.5,), (0,))
    run_sweep(base, grid, "s", train_fn=FakeTrainer(), make_config=dict)
    used = str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # what auto picks here
    again = FakeTrainer()
    same = {**base, "data_dir": str(tmp_path / "data") + "/", "device": used}
    run_sweep(same, grid, "s", train_fn=again, make_config=dict)
    assert again.calls == []  # every run recognised as finished, nothing redone
    with pytest.raises(ValueError, match=r"different config \(epochs: 1 -> 2\); use another --out"):
        prepare_sweep_dir({**same, "epochs": 2}, grid, "s")
