"""The command line explains itself: errors in the words of its flags, the next step after Ctrl-C or a refusal,
a long run's length up front, progress off a terminal, plurals, a description in every command's help, and bench
sizes that cannot measure a saving refused or flagged."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import freezeout.cli.output as output
import freezeout.experiment.demo as demo
from freezeout.cli import _COMMANDS, build_parser
from freezeout.cli.bench import MIN_STEPS, warnings
from freezeout.experiment import progress, session
from freezeout.experiment.progress import duration, estimate_line, plural
from tests.helpers.cifar_files import one_thread
from tests.helpers.cli import one_line_error, run
from tests.helpers.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--depth", "10", "--growth", "2", "--batch-size", "100"]
TINY_MODEL = ["--depth", "10", "--growth", "2", "--input-size", "8", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_plural_and_duration_in_words():
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"
    cases = {0: "0 s", 45.4: "45 s", 59.6: "1 min 00 s", 422: "7 min 02 s", 3600: "1 h 00 min", 4020: "1 h 07 min"}
    assert {s: duration(s) for s in cases} == cases


def test_a_long_run_says_how_to_stop_resume_and_look_quicker():
    short = estimate_line(90, 30, 30, 1, "cpu")
    assert short == "about 1 min 30 s for this run's 30 steps (1 epoch in all) on cpu, from its first steps"
    resumed = estimate_line(progress.LONG_RUN, 1500, 3000, 100, "cuda:0")
    assert resumed.startswith("about 10 min 00 s for the 1500 steps left (100 epochs in all) on cuda:0")
    assert "Ctrl-C stops it, and the same command with --resume continues" in resumed and "freezeout demo" in resumed


def test_every_command_has_a_description_in_its_help():
    for command in _COMMANDS:
        r = run(command, "--help")
        assert r.returncode == 0, r.stderr
        usage, description = r.stdout.split("\n\n")[:2]
        assert usage.startswith(f"usage: freezeout {command}") and not description.startswith("options:"), command
        assert len(description.split()) >= 8, (command, description)  # a sentence, not a title


def test_library_names_become_the_commands_flags():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    said = {
        "data_dir is required for cifar10": "--data-dir is required for cifar10",
        "out_dir runs/x is not writable: read-only": "--out runs/x is not writable: read-only",  # the alias
        "val_split must be an integer in [0, 9]": "--val-split must be an integer in [0, 9]",
        "cache=True needs inputs that repeat (augment=False)": "--cache needs inputs that repeat (--no-augment)",
        "fuse=False and channels_last=True": "--no-fuse and --channels-last",
        "the model must be told: depth must be 10": "the model must be told: depth must be 10",  # not its subject
        "nonsense must be 3": "nonsense must be 3",  # no such flag
        "resume=False": "resume=False",  # a store_true flag has no negative
    }
    assert {m: output.in_flags(m, train) for m in said} == said
    assert output.in_flags("t0 must be a number in (0, 1)", sweep) == "--t0 must be a number in (0, 1)"  # dest t0s
    model_folder = "model is a file, not a folder: choose another --out"  # --out model: the subject is the folder
    assert output.in_flags(model_folder, train, given=["model", "auto"]) == model_folder
    assert output.in_flags("model must be one of a, b", train, given=["out"]) == "--model must be one of a, b"


def test_a_folder_named_like_a_flag_is_named_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").write_text("")
    one_line_error(run("train", "--out", "model"), "error: model is a file, not a folder: choose another --out")


def test_a_finished_run_resumed_with_other_epochs_suggests_another_out(tmp_path):
    out = tmp_path / "run"
    assert run("train", *TINY_TRAIN, "--epochs", "1", "--no-progress", "--out", out).returncode == 0
    r = run("train", *TINY_TRAIN, "--epochs", "2", "--no-progress", "--out", out, "--resume")
    one_line_error(r, "different config (epochs: 1 -> 2); a run continues only with the config it started with")
    assert r.stderr.rstrip().endswith("for the new one, choose another --out")
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1  # the finished run left as it was


def test_one_epoch_is_said_in_the_singular(tmp_path):
    r = run("train", *TINY_TRAIN, "--epochs", "1", "--no-progress", "--out", tmp_path / "run")
    assert r.returncode == 0 and ", 1 epoch\n" in r.stdout, r.stdout
    assert not re.search(r"\b1 (epochs|steps|runs|layers|threads)\b", r.stdout + r.stderr)


def test_a_run_says_its_length_up_front_off_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "ANNOUNCE", 0.0)  # a tiny run is announced as a long one would be
    monkeypatch.setattr(progress, "LONG_RUN", 0.0)
    r = run("train", *TINY_TRAIN, "--epochs", "2", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    first, *epochs = r.stderr.splitlines()  # the run's length before its first epoch ends, then the epoch lines
    assert re.fullmatch(
        r"about \d+ s for this run's 30 steps \(2 epochs in all\) on cpu, from its first steps; .*", first
    )
    assert "with --resume continues" in first and [e[:10] for e in epochs] == ["epoch 1/2:", "epoch 2/2:"]


def test_a_short_run_is_not_announced(tmp_path):
    r = run("train", *TINY_TRAIN, "--epochs", "1", "--out", tmp_path / "run")
    assert r.returncode == 0 and not r.stderr.startswith("about"), r.stderr  # seconds, under progress.ANNOUNCE


def test_calibrating_shows_progress_off_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(output, "PROGRESS_EVERY", 0.0)  # a line at every step instead of every 30 s
    r = run("estimate", *TINY_MODEL, "--calibrate", "--repeats", "1", "--curve-points", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "freezeout estimate: step-time curve: 6 training steps to run"  # 3 k's x (1 warm + 1 timed)
    assert re.fullmatch(r"freezeout estimate: step-time curve: 1/6 training steps \(17%\), \d+ s so far, about .* left",
                        lines[1])  # fmt: skip
    assert re.fullmatch(r"freezeout estimate: step-time curve: 6 training steps done in \d+ s", lines[-1])
    assert len(lines) == 7 and "\r" not in r.stderr  # 5 lines in between: 1/6 to 5/6


def test_progress_draws_a_bar_on_a_terminal_and_nothing_when_quiet():
    term = Terminal()
    with output.Progress("bench", "bench", 4, stream=term) as bar:
        for _ in range(4):
            bar.update()
    assert "bench:   0%|" in term.getvalue() and "\r" in term.getvalue()  # tqdm, redrawn in place
    quiet = io.StringIO()
    with output.Progress("bench", "bench", 4, quiet=True, stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_an_interrupted_measurement_does_not_say_it_is_done(monkeypatch):
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), output.Progress("estimate", "curve", 4, stream=stream) as bar:
        bar.update()
        raise KeyboardInterrupt
    assert stream.getvalue() == "freezeout estimate: curve: 4 steps to run\n"


def test_bench_refuses_too_few_steps_and_flags_rows_that_measure_nothing():
    one_line_error(run("bench", *TINY_MODEL, "--steps", "1"), f"--steps: expected an integer in [{MIN_STEPS},")
    r = run("bench", *TINY_MODEL, "--steps", "4", "--t0", "1", "--repeats", "1", "--curve-points", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("cubic"))
    assert "nan" not in r.stdout and row.split()[-2] == "-"  # realized / ideal: no ideal to divide by
    assert (
        "warning: no layer froze before the last of the 4 steps in cubic-scaled-1: realized is the runs' " in r.stdout
    )


def test_bench_flags_rows_whose_freezes_outweigh_the_run():
    rows = [
        {"name": "a", "ideal_saving": 0.2, "sched_step_fraction": 0.01},
        {"name": "b", "ideal_saving": 0.2, "sched_step_fraction": 0.5},
        {"name": "c", "ideal_saving": 0.0, "sched_step_fraction": 0.9},
    ]
    first, second = warnings({"rows": rows}, 12)
    assert first.startswith("no layer froze before the last of the 12 steps in c:")
    assert second.startswith("in b the freezes' one-off work in sched.step() took up to 50% of the training time")
    assert warnings({"rows": rows[:1]}, 12) == []


def test_a_finished_demo_is_shown_saying_so_and_other_epochs_get_another_out(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO", {**demo.DEMO, "depth": 10, "growth": 2, "batch_size": 300})
    out = tmp_path / "demo"
    first = run("demo", "--epochs", "1", "--out", out, "--no-progress")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    again = run("demo", "--epochs", "1", "--out", out, "--no-progress")
    assert again.returncode == 0 and again.stdout == first.stdout
    shown = f"freezeout demo: {out} holds a finished demo: showing its result (choose another --out to train a new"
    assert again.stderr == shown + " one)\n"
    before = (out / "demo.json").read_bytes()
    other = run("demo", "--epochs", "3", "--out", out)
    one_line_error(
        other, f"{out} holds a demo of 1 epoch: choose another --out for one of 3 epochs (or give --epochs 1"
    )
    assert "cannot resume" not in other.stderr and (out / "demo.json").read_bytes() == before
    seed = run("demo", "--epochs", "1", "--seed", "4", "--out", out)
    one_line_error(seed, "holds a demo of 1 epoch, seed 0: choose another --out for one of 1 epoch, seed 4")


def start(*args: object, env_threads: str = "1") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": env_threads}
    command = [sys.executable, "-m", "freezeout", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def interrupt_when(proc: subprocess.Popen, ready: Path, timeout: float = 120) -> tuple[int, str]:
    """Ctrl-C (SIGINT) to ``proc`` once ``ready`` exists; its exit status and stderr."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.slow  # a process until its first checkpoint: ~7 s
def test_ctrl_c_in_a_real_train_names_resume(tmp_path):
    out = tmp_path / "run"
    proc = start("train", "--depth", "10", "--growth", "2", "--batch-size", "50", "--epochs", "100", "--no-progress",
                 "--out", out)  # fmt: skip
    code, err = interrupt_when(proc, out / "checkpoint.pt")
    assert code == 130 and "Traceback" not in err, err
    assert err == (
        "freezeout train: interrupted; the same command with --resume continues after the last finished epoch (its "
        f"checkpoint is in {out})\n"
    )


@pytest.mark.slow  # two processes, each until its first file: ~10 s
def test_ctrl_c_before_a_checkpoint_and_in_a_demo_say_what_is_left(tmp_path):
    out = tmp_path / "run"
    proc = start("train", "--depth", "10", "--growth", "2", "--batch-size", "1", "--no-progress", "--out", out)
    code, err = interrupt_when(proc, out / "config.json")  # written at the start, before the first epoch's 1497 steps
    assert code == 130 and err.endswith("no epoch had finished, so there is nothing to resume: run the same command "
                                        "to start again\n"), err  # fmt: skip
    folder = tmp_path / "demo"
    code, err = interrupt_when(start("demo", "--out", folder, "--no-progress"), folder / "demo.json")
    assert (code, err) == (130, "freezeout demo: interrupted; the same command continues where it stopped\n")


@pytest.mark.slow  # a process of its own: ~4 s
def test_a_real_calibration_into_a_pipe_says_what_it_runs_and_when_it_is_done():
    proc = start("estimate", *TINY_MODEL, "--calibrate", "--repeats", "1", "--curve-points", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert lines[0] == "freezeout estimate: step-time curve: 4 training steps to run" and "\r" not in err
    assert re.fullmatch(r"freezeout estimate: step-time curve: 4 training steps done in \d+ s", lines[-1])
