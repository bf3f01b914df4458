"""The command line and a run's files: a batch clipped to the data, a resume that recovers or refuses in one line,
a full disk, a read-only folder, and what ``freezeout`` alone says. Real processes where the item is one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from freezeout.experiment import runfiles, session
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.runfiles import TEMP_SUFFIX, WriteError, atomic_bytes
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread
from tests.helpers.cli import one_line_error
from tests.helpers.cli import run as cli
from tests.helpers.mounts import freezeout_on_tmpfs, freezeout_read_only, needs_namespaces

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset", "digits", "--depth", "10", "--growth", "2", "--batch-size", "100", "--device", "cpu"]
ARGS += ["--no-progress"]
CONFIG = TrainConfig(dataset="digits", depth=10, growth=2, batch_size=100, device="cpu", epochs=3)
TIMING = ("epoch_seconds", "eval_seconds")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def process(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "freezeout", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=env)


# Each test below runs the command line in this process for `make test`, and once more as a real process of its
# own (~2 s to start) with the slow tests: the same assertions on both.
@pytest.fixture(params=["in-process", pytest.param("process", marks=pytest.mark.slow)])
def freezeout(request):
    return cli if request.param == "in-process" else process


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def stop_after_epoch(monkeypatch, epoch: int) -> None:
    """The trainer dies (KeyboardInterrupt) right after writing the checkpoint of ``epoch``."""
    real = session.atomic_torch_save

    def save(path, obj):
        real(path, obj)
        if obj["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(session, "atomic_torch_save", save)


def test_freezeout_alone_prints_usage_commands_and_where_to_start(freezeout):
    r = freezeout()
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: freezeout ")
    for command in ("demo", "train", "estimate", "bench", "sweep", "plot"):
        assert f"\n  {command} " in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("freezeout: error: no command given; try `freezeout demo`")


def test_a_batch_larger_than_the_training_set_is_clipped_said_and_recorded(freezeout, tmp_path):
    out = tmp_path / "run"
    argv = ["train", *ARGS, "--epochs", "1", "--batch-size", "2000", "--out", out]
    r = freezeout(*argv)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        "freezeout train: batch size 2000 is larger than the training set (1497 examples of digits): clipped to "
        "1497, one step per epoch"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["config"]["batch_size"] == 1497
    assert summary["config"]["batch_size"] == 1497 and summary["steps_per_epoch"] == 1
    again = cli(*argv, "--resume")  # the same command resumes what ran: no "different config"
    assert again.returncode == 0, again.stderr
    big = ["sweep", *ARGS, "--epochs", "1", "--batch-size", "5000", "--strategies", "cubic-scaled", "--t0", "0.5"]
    big += ["--seeds", "0", "--out", tmp_path / "sweep"]
    first = cli(*big)
    assert first.returncode == 0 and "clipped to 1497" in first.stderr, first.stderr
    plan = cli(*big, "--dry-run", "--timing-steps", "0")  # the sweep's finished runs are known as its own
    assert plan.stdout.count(" finished ") == 2 and "0 to run" in plan.stdout, plan.stdout


def test_a_torn_last_metrics_line_is_recovered_from_the_checkpoint(freezeout, tmp_path):
    out = tmp_path / "run"
    train(CONFIG, out)
    whole = metrics(out)
    (out / "summary.json").unlink()  # killed after its last checkpoint
    text = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # half a line
    r = freezeout("train", *ARGS, "--epochs", "3", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"freezeout train: {out / 'metrics.jsonl'}: the line of epoch 3 was torn; recovered it from checkpoint.pt",
        f"freezeout train: resuming {out}: epoch 3 of 3 is done, writing its summary",
    ]
    assert metrics(out) == whole  # the epoch's own line, whole again, timings included


def test_an_earlier_epoch_without_a_line_cannot_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    stop_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, out)
    monkeypatch.undo()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("{not json\n" + lines[1] + "\n")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".freezeout.lock"}
    result = cli("train", *ARGS, "--epochs", "3", "--out", out, "--resume")
    one_line_error(result, "metrics.jsonl has no readable line for epoch 1 of the 2 in checkpoint.pt; restore the")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".freezeout.lock"} == before


def test_resume_says_where_it_resumes_and_rewrites_a_corrupt_config(freezeout, tmp_path, monkeypatch):
    out = tmp_path / "run"
    stop_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, out)
    monkeypatch.undo()
    (out / "config.json").write_text('{"config": {"t0": ')  # torn
    r = freezeout("train", *ARGS, "--epochs", "3", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"freezeout train: {out / 'config.json'} was unreadable (JSONDecodeError); rewritten from checkpoint.pt",
        f"freezeout train: resuming {out} from epoch 2 of 3 (after epoch 1 of 3, step 15)",
    ]
    assert json.loads((out / "config.json").read_text())["config"] == CONFIG.validate().to_dict()
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]


def test_a_finished_run_with_a_corrupt_config_is_noticed_and_repaired(tmp_path):
    out = tmp_path / "run"
    summary = train(CONFIG, out)
    (out / "config.json").write_text(json.dumps({"config": {**summary["config"], "t0": 0.5}}))  # hand-edited
    result = cli("train", *ARGS, "--epochs", "3", "--out", out, "--resume")
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [
        f"freezeout train: {out / 'config.json'} was at odds with summary.json (t0: 0.5 -> 0.8); rewritten from "
        "summary.json"
    ], result.stderr
    assert json.loads((out / "config.json").read_text())["config"] == summary["config"]
    again = cli("train", *ARGS, "--epochs", "3", "--out", out, "--resume")
    assert again.returncode == 0 and again.stderr == ""  # nothing left to repair, nothing said


def resumed_equals_uninterrupted(out: Path, full: Path) -> None:
    assert untimed(metrics(out)) == untimed(metrics(full))
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True)["model"] for p in (out, full))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    full = tmp_path_factory.mktemp("full")
    with one_thread():
        train(CONFIG, full)
    return full


def test_a_full_disk_names_the_file_and_the_checkpoint_kept(tmp_path, monkeypatch, uninterrupted):
    out, real = tmp_path / "run", os.fsync
    writes = []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if sys.platform == "linux" else ""
        writes.append(name)
        if ".checkpoint.pt." in name and sum(".checkpoint.pt." in w for w in writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(runfiles.os, "fsync", fsync)
    result = cli("train", *ARGS, "--epochs", "3", "--out", out)
    one_line_error(
        result,
        f"cannot write {out / 'checkpoint.pt'}: No space left on device; the checkpoint of epoch 1 is kept: free "
        "some space, then run the same command with --resume",
    )
    assert not list(out.glob(f"*{TEMP_SUFFIX}"))  # the temp file is gone, and never named
    monkeypatch.undo()
    assert cli("train", *ARGS, "--epochs", "3", "--out", out, "--resume").returncode == 0
    resumed_equals_uninterrupted(out, uninterrupted)


@needs_namespaces
@pytest.mark.slow  # two processes and a tmpfs: ~6 s
def test_a_real_full_disk_then_a_resume_elsewhere(tmp_path, uninterrupted):
    # 64 KiB: config, metrics and the first checkpoint (~36 KB) fit; the second checkpoint's temp file does not
    r = freezeout_on_tmpfs(tmp_path / "mnt", "64k", ["train", *ARGS, "--epochs", "3", "--out", "{mnt}/run"],
                           tmp_path / "copy")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"freezeout train: error: cannot write {tmp_path / 'mnt' / 'run' / 'checkpoint.pt'}: No space left on "
        "device; the checkpoint of epoch 1 is kept: free some space, then run the same command with --resume"
    ]
    out = tmp_path / "copy" / "run"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert process("train", *ARGS, "--epochs", "3", "--out", out, "--resume").returncode == 0
    resumed_equals_uninterrupted(out, uninterrupted)


def test_a_failed_write_names_the_file_asked_for_never_its_temp_file(tmp_path):
    target = tmp_path / "nope" / "figure1.png"  # its folder is missing: the temp file cannot be created
    with pytest.raises(WriteError) as caught:
        atomic_bytes(target, b"png")
    assert str(caught.value) == f"cannot write {target}: No such file or directory"
    assert caught.value.errno == errno.ENOENT and TEMP_SUFFIX not in str(caught.value)


@needs_namespaces
@pytest.mark.slow  # a process in a mount namespace: ~2 s
def test_plot_into_a_read_only_folder_names_that_folder(tmp_path):
    folder = tmp_path / "figures"
    r = freezeout_read_only(folder, ["plot", "--figure", "1", "--out", str(folder)])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"freezeout plot: error: --out {folder} is not writable: Read-only file system"
    ], r.stderr
    assert not list(folder.iterdir())


def test_a_dry_run_refuses_a_folder_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("mine")
    argv = ["sweep", *ARGS, "--epochs", "1", "--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0"]
    result = cli(*argv, "--dry-run", "--timing-steps", "0", "--out", tmp_path / "afile" / "sweep")
    one_line_error(
        result, f"--out {tmp_path / 'afile' / 'sweep'} is not writable: {tmp_path / 'afile'} is not a folder"
    )
    assert result.stdout == ""


@needs_namespaces
@pytest.mark.slow  # a process in a mount namespace: ~2 s
def test_a_dry_run_refuses_a_folder_it_could_not_write(tmp_path):
    folder = tmp_path / "ro"
    argv = ["sweep", *ARGS, "--epochs", "1", "--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0"]
    r = freezeout_read_only(folder, [*argv, "--dry-run", "--timing-steps", "0", "--out", str(folder / "sweep")])
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().splitlines() == [
        f"freezeout sweep: error: --out {folder / 'sweep'} is not writable: {folder} is read-only"
    ]
