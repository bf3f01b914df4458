"""kill -9 of a real ``freezeout train`` process at random moments, inside checkpoint and summary writes too:
every resume finds a valid checkpoint, and the finished run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from freezeout.experiment.config import TrainConfig
from freezeout.experiment.lock import LOCK_FILE
from freezeout.experiment.runfiles import TEMP_SUFFIX
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread
from tests.helpers.seams import SCRIPT

ROOT = Path(__file__).resolve().parents[1]
# 4 epochs of 140 steps; linear t0 = 0.5: layers freeze from epoch 3 on, so resumes cross frozen layers too
CONFIG = TrainConfig(
    dataset="digits", depth=10, growth=2, epochs=4, batch_size=10, schedule="linear", t0=0.5, device="cpu"
)
ARGS = ["train", "--dataset", "digits", "--depth", "10", "--growth", "2", "--epochs", "4", "--batch-size", "10"]
ARGS += ["--schedule", "linear", "--t0", "0.5", "--device", "cpu", "--no-progress"]
TIMING = ("train_seconds", "wall_seconds", "epoch_seconds", "eval_seconds")
PAUSE = 0.4  # seconds each atomic write waits before its rename, in the processes killed inside a write


def start(out: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []  # killed before any checkpoint: start over
    return subprocess.Popen(
        [sys.executable, SCRIPT, *(["--pause", str(pause)] if pause else []), *ARGS, "--out", str(out), *resume],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def kill_inside_write(out: Path, name: str, nth: int) -> None:
    """Kill -9 while the ``nth`` write of ``name`` has its temp file written but not yet renamed."""
    proc = start(out, pause=PAUSE)
    seen = 0
    for line in proc.stderr:  # the test pause logs one line as each write reaches its pause
        if "test pause" in line and f"writing {name}," in line:
            seen += 1
            if seen == nth:
                kill(proc)
                return
    proc.wait(timeout=60)
    raise AssertionError(f"the run ended (rc {proc.returncode}) before write {nth} of {name}")


def kill_mid_epoch(out: Path, delay: float) -> None:
    """Kill -9 ``delay`` seconds after the run's next checkpoint lands: inside the following epoch."""
    path = out / "checkpoint.pt"
    before = path.stat().st_mtime_ns if path.exists() else None
    proc = start(out)
    deadline = time.monotonic() + 120
    while (path.stat().st_mtime_ns if path.exists() else None) == before:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before its next checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill"
    kill(proc)


def checkpoint_epoch(out: Path) -> int:
    """The epoch of the checkpoint in ``out`` (0: none), which must be a complete, loadable file."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)  # a torn file raises here
    assert TrainConfig.from_dict(state["config"]) == CONFIG
    return state["epoch"]


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    with one_thread():
        summary = train(CONFIG, out)
    return out, summary, torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.slow  # kills a real run at many points: ~25 s
def test_kill_9_anywhere_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    full_out, full_summary, full_state = uninterrupted
    lines = (full_out / "metrics.jsonl").read_text().splitlines()
    epoch_time = min(r["epoch_seconds"] + r["eval_seconds"] for r in map(json.loads, lines))
    seed = int(os.environ.get("FREEZEOUT_KILL_SEED", "0"))
    rng = random.Random(seed)
    out = tmp_path / "run"
    first = rng.randint(1, 2)
    delay = rng.uniform(0.1, 0.9) * epoch_time
    print(
        f"epoch {epoch_time:.3f} s; kill seed {seed}: inside checkpoint write {first}; {delay:.3f} s into an "
        "epoch; inside a checkpoint write after resuming; inside the summary write"
    )

    # a user's files in the run folder, named like temp files: a resume must never take them for its own
    users = {".notes.tmp": b"mine", ".checkpoint.pt.abc123.tmp": b"also mine"}
    out.mkdir()
    for name, data in users.items():
        (out / name).write_bytes(data)

    kill_inside_write(out, "checkpoint.pt", first)
    assert checkpoint_epoch(out) == first - 1  # the previous checkpoint, whole; the new one never replaced it
    assert list(out.glob(f".checkpoint.pt.*{TEMP_SUFFIX}")), "the kill did not land inside the write"
    assert not (out / "summary.json").exists()
    assert (out / LOCK_FILE).is_file()  # the killed holder's lock file: the resumes below need no clean-up

    kill_mid_epoch(out, delay)
    done = checkpoint_epoch(out)
    assert first <= done < CONFIG.epochs and not (out / "summary.json").exists()
    assert not list(out.glob(f".checkpoint.pt.*{TEMP_SUFFIX}"))  # the resume cleared what the first kill left

    kill_inside_write(out, "checkpoint.pt", 1)  # the first checkpoint after the resume
    assert checkpoint_epoch(out) == done and not (out / "summary.json").exists()

    kill_inside_write(out, "summary.json", 1)
    assert checkpoint_epoch(out) == CONFIG.epochs and not (out / "summary.json").exists()

    proc = start(out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err

    summary = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in TIMING} == {
        k: v for k, v in full_summary.items() if k not in TIMING
    }
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"].keys() == full_state["model"].keys()
    for k, v in full_state["model"].items():
        assert torch.equal(state["model"][k], v), k
    for i, s in full_state["optimizer"]["state"].items():
        assert all(torch.equal(state["optimizer"]["state"][i][k], v) for k, v in s.items()), i
    assert state["freezeout"] == full_state["freezeout"]
    assert records(out) == records(full_out)
    assert not list(out.glob(f"*{TEMP_SUFFIX}"))
    assert {name: (out / name).read_bytes() for name in users} == users
