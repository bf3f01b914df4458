"""One kind of run per folder: ``train``, ``sweep`` and ``demo`` each refuse a folder holding another kind, in one
line and one wording, before writing anything; a file where a folder belongs is refused alike by every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import freezeout.experiment.demo as demo
from freezeout.experiment.folders import check_folder, folder_kind
from tests.helpers.cifar_files import one_thread
from tests.helpers.cli import one_line_error
from tests.helpers.cli import run as cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--depth", "10", "--growth", "1", "--epochs", "1", "--batch-size", "500"]
TINY += ["--device", "cpu", "--no-progress"]
SWEEP = ["--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0"]
COMMANDS = {
    "train": ["train", *TINY, "--out"],
    "sweep": ["sweep", *TINY, *SWEEP, "--out"],
    "demo": ["demo", "--epochs", "1", "--no-progress", "--out"],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A finished run of each kind, made by the command line itself."""
    root = tmp_path_factory.mktemp("kinds")
    with one_thread(), pytest.MonkeyPatch.context() as m:
        m.setattr(demo, "DEMO", {**demo.DEMO, "depth": 10, "growth": 1, "batch_size": 500})
        for kind, argv in COMMANDS.items():
            result = cli(*argv, root / kind)
            assert result.returncode == 0, result.stderr
    return root


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != ".freezeout.lock"}


def test_each_kind_is_known_by_its_files(folders, tmp_path):
    assert {kind: folder_kind(folders / kind)[0] for kind in COMMANDS} == {k: k for k in COMMANDS}
    assert folder_kind(folders / "demo" / "baseline")[0] == "train"  # a demo's runs are train runs
    (tmp_path / "notes.txt").write_text("mine")
    assert folder_kind(tmp_path) is None  # a user's files mark nothing
    check_folder(tmp_path, "sweep")
    with pytest.raises(ValueError, match="kind must be one of train, sweep, demo"):
        check_folder(tmp_path, "bench")


@pytest.mark.parametrize("holds", sorted(COMMANDS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_folder_of_another_kind_is_refused_and_left_alone(folders, command, holds):
    if command == holds:
        return
    before = snapshot(folders / holds)
    with one_thread():
        result = cli(*COMMANDS[command], folders / holds)
    names = {"train": "train run", "sweep": "sweep", "demo": "demo"}
    one_line_error(result, f"{folders / holds} holds a {names[holds]} (its ")
    assert f"not a {names[command]}: a folder holds one kind of run; choose another --out" in result.stderr
    assert snapshot(folders / holds) == before


@pytest.mark.slow  # two real processes: ~4 s
def test_a_sweep_no_longer_writes_beside_a_train_run_in_a_real_process(folders):
    before = snapshot(folders / "train")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [*COMMANDS["sweep"], str(folders / "train")]
    for extra in ([], ["--dry-run", "--timing-steps", "0"]):
        r = subprocess.run([sys.executable, "-m", "freezeout", *argv, *extra], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"freezeout sweep: error: {folders / 'train'} holds a train run (its config.json), not a sweep: a folder "
            "holds one kind of run; choose another --out"
        ]
    assert snapshot(folders / "train") == before


@pytest.mark.parametrize(
    "argv",
    [
        COMMANDS["train"],
        COMMANDS["demo"],
        COMMANDS["sweep"],
        [*COMMANDS["sweep"][:-1], "--dry-run", "--timing-steps", "0", "--out"],
        ["plot", "--figure", "1", "--out"],
    ],
)
def test_a_file_given_for_a_folder_is_one_refusal_in_one_wording(tmp_path, argv):
    if argv[0] == "plot":
        pytest.importorskip("matplotlib", reason="freezeout plot needs the [plot] extra")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with one_thread():
        result = cli(*argv, afile)
    one_line_error(result, f"error: {afile} is a file, not a folder: choose another --out")
    assert result.stdout == "" and afile.read_text() == "mine"  # a dry run plans nothing that cannot happen
