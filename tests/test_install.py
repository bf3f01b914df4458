"""A plain ``pip install`` (no extras) into a fresh virtual environment gives a working ``freezeout`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The CPU build that lies on this machine's disk: a bare torch requirement would fetch a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def run(*cmd: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.mark.slow
def test_pip_install_without_extras_runs_every_command(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(ROOT / "freezeout", src / "freezeout", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    python, freezeout = venv / "bin" / "python", venv / "bin" / "freezeout"
    for requirement in (TORCH, src):
        r = run(python, "-m", "pip", "install", "-q", requirement, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    where = run(python, "-c", "import freezeout; print(freezeout.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    tiny = ["--depth", "10", "--growth", "1", "--input-size", "8"]
    commands = [
        ["demo", "--epochs", "1", "--out", tmp_path / "demo"],
        ["train", "--depth", "10", "--growth", "1", "--epochs", "1", "--out", tmp_path / "run"],
        ["estimate", *tiny, "--calibrate", "--repeats", "1", "--curve-points", "2"],
        ["bench", *tiny, "--steps", "4", "--repeats", "1", "--curve-repeats", "1", "--curve-points", "2"],
    ]
    for args in commands:
        r = run(freezeout, *args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        assert "NumPy" not in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "demo" / "demo.json").is_file() and (tmp_path / "run" / "summary.json").is_file()
