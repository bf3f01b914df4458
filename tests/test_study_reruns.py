"""A committed run of the study reproduces its numbers when trained again alone with its ``config.json``
(docs/STUDY.md): the command line built from the config's fields alone, one thread, each epoch's metric, loss and
frozen count compared with the committed ``metrics.jsonl``. The committed runs were trained in lockstep with the
others of their sweep; here each runs alone."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from freezeout.cli import build_parser, command_parser
from tests.helpers.doc_blocks import ROOT

STUDY = ROOT / "docs" / "study"
COMPARED = ("num_frozen", "step", "train_loss", "test_loss", "test_error", "test_bpb")


def command_line(config: dict[str, Any]) -> list[str]:
    """``freezeout train`` flags for every field of ``config``; a field with no flag must hold the default."""
    actions = {a.dest: a for a in command_parser(build_parser(), "train")._actions if a.option_strings}
    argv: list[str] = []
    for field, value in config.items():
        action = actions.get(field)
        if action is None:
            assert value is True and field == "nesterov", f"config field {field}={value!r} has no flag"
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # a store_true flag
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def metrics(folder: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in COMPARED if k in r} for r in rows]


def train_again(committed: Path, tmp_path: Path) -> Path:
    saved = json.loads((committed / "config.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "freezeout", "train", *command_line(saved["config"]), "--no-progress",
            "--out", str(tmp_path / "again")]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["config"] == saved["config"] and again["data"] == saved["data"]
    return tmp_path / "again"


@pytest.mark.slow  # a FreezeOut run and a shortened baseline on MNIST-1D, alone: ~30 s
@pytest.mark.parametrize("run", ["cubic-scaled_t0=0.8_seed=0", "shorter_f=0.6_seed=1"])
def test_a_committed_mnist1d_run_trained_again_alone_gives_its_numbers(run, tmp_path):
    pytest.importorskip("mnist1d")
    committed = STUDY / "mnist1d" / run
    assert metrics(train_again(committed, tmp_path)) == metrics(committed)


@pytest.mark.slow  # a shortened GPT baseline on the standard library's sources: ~30 s
def test_a_committed_language_model_run_trained_again_alone_gives_its_numbers(tmp_path):
    committed = STUDY / "pystdlib" / "shorter_f=0.5_seed=0"
    python = json.loads((committed / "config.json").read_text())["data"]["python"]
    if python != platform.python_version():
        pytest.skip(f"the committed run read Python {python}'s standard library; this is {platform.python_version()}")
    assert metrics(train_again(committed, tmp_path)) == metrics(committed)
