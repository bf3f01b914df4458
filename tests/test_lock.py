"""One process per run folder: real second processes on a folder in use are refused at once, in one line naming
the holder, and leave it consistent; a killed holder's lock is gone with it; only freezeout's temp files go."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest
import torch

from freezeout.cli import build_parser, main
from freezeout.experiment.lock import LOCK_FILE, FolderLockedError, holds_lock, run_lock
from freezeout.experiment.runfiles import TEMP_SUFFIX, atomic_json, remove_stale_temps
from tests.helpers.cifar_files import one_thread
from tests.helpers.processes import finish, lock_holder, start_paused, wait_for_write

TINY = ["--dataset", "digits", "--depth", "10", "--growth", "1", "--epochs", "1", "--batch-size", "50"]
TINY += ["--device", "cpu", "--no-progress"]
SWEEP = ["sweep", *TINY, "--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0"]
PAUSE = 0.25  # each atomic write of the process in the folder waits this long before its rename


@pytest.fixture(autouse=True)
def _one_thread():
    build_parser()  # imports every command's module now, not while the other process waits inside a write
    with one_thread():
        yield


def refused(capsys, argv: list[str], pid: int) -> str:
    """``main(argv)`` exits 2 with one line naming the holder ``pid``; returns the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another freezeout process" in err[0], err
    assert f"pid {pid} on {socket.gethostname()}" in err[0]
    return err[0]


def test_a_second_train_is_refused_while_a_run_writes_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_paused(["train", *TINY, "--out", str(out)], PAUSE)
    try:
        wait_for_write(proc, "checkpoint.pt")  # the run's temp file is on disk, not yet renamed
        line = refused(capsys, ["train", *TINY, "--seed", "1", "--out", str(out)], proc.pid)
        assert "python -m freezeout train" in line and "--out" in line  # the holder's command
        # The case: a --resume here used to delete the other's in-flight temp file (it then died).
        refused(capsys, ["train", *TINY, "--out", str(out), "--resume"], proc.pid)
    finally:
        rc, err = finish(proc)
    assert rc == 0, err  # its temp file was left alone: it renamed it into place
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]  # one run's epochs, once
    for name in ("config.json", "summary.json"):
        assert json.loads((out / name).read_text())["config"]["seed"] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["seed"] == 0
    assert not list(out.glob(f"*{TEMP_SUFFIX}"))


@pytest.mark.slow  # a real sweep raced: ~8 s
def test_a_second_sweep_and_a_train_in_its_run_are_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    proc = start_paused([*SWEEP, "--out", str(out)], PAUSE)
    try:
        wait_for_write(proc, "checkpoint.pt")  # inside the baseline run, which holds its folder until it ends
        run = out / "baseline_seed=0"
        refused(capsys, ["train", *TINY, "--t0", "1", "--out", str(run), "--resume"], proc.pid)
        refused(capsys, [*SWEEP, "--out", str(out)], proc.pid)
    finally:
        rc, err = finish(proc)
    assert rc == 0, err
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["baseline_seed=0", "cubic-scaled_t0=0.5_seed=0"]
    for name in runs:
        assert [json.loads(x)["epoch"] for x in (out / name / "metrics.jsonl").read_text().splitlines()] == [1]
        assert json.loads((out / name / "summary.json").read_text())["finished"] is True
    assert (out / "aggregate.csv").is_file() and not list(out.rglob(f"*{TEMP_SUFFIX}"))


def test_a_sweep_whose_run_is_held_stops_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    run = out / "baseline_seed=0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")  # a run killed before its first checkpoint: a sweep would redo it
    with lock_holder(run) as holder:
        refused(capsys, [*SWEEP, "--out", str(out)], holder.pid)
    assert (run / "config.json").read_text() == "{}"  # not cleared under the holder's feet


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    folder = tmp_path / "run"
    with lock_holder(folder) as holder:
        with pytest.raises(FolderLockedError, match=rf"pid {holder.pid} on .*, started .*: "), run_lock(folder):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with run_lock(folder):  # no clean-up: the kernel dropped the lock with the process
            record = json.loads((folder / LOCK_FILE).read_text())
            assert record["pid"] == os.getpid()


def test_the_lock_is_reentrant_and_its_file_stays(tmp_path):
    folder = tmp_path / "new" / "run"
    assert not holds_lock(folder)
    with run_lock(folder):  # creates the folder
        with run_lock(folder):  # a sweep's run: the sweep holds it, the trainer takes it again
            assert holds_lock(folder)
        assert holds_lock(folder)
    assert not holds_lock(folder) and (folder / LOCK_FILE).is_file()  # never unlinked


def test_only_freezeout_temp_files_are_removed_and_only_under_the_lock(tmp_path):
    mine = {name: b"user data" for name in (".notes.tmp", ".x.tmp", ".checkpoint.pt.abc123.tmp", "a.freezeout-tmp")}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    stale = tmp_path / f".checkpoint.pt.0a1b2c3d{TEMP_SUFFIX}"  # what a write killed before its rename leaves
    stale.write_bytes(b"half")
    with pytest.raises(RuntimeError, match="run lock"):
        remove_stale_temps(tmp_path)
    with run_lock(tmp_path):
        assert remove_stale_temps(tmp_path) == [stale]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != LOCK_FILE} == mine


def test_temp_files_carry_the_suffix_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(src)), replace(src, dst)))
    atomic_json(tmp_path / "r.json", {"x": 1})
    assert len(renamed) == 1 and re.fullmatch(r"\.r\.json\.[0-9a-f]{8}\.freezeout-tmp", renamed[0]), renamed
    with pytest.raises(TypeError):  # fails after its temp file was created
        atomic_json(tmp_path / "s.json", {"x": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
