"""A plain ``pip install`` (no extras) into a fresh virtual environment gives a working ``freezeout`` command, and
``pip install '.[test]'`` alone a green suite (what needs another extra skipped, saying which)."""

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


def fresh_venv(tmp_path: Path, extras: str = "", folders: tuple[str, ...] = ("freezeout",)) -> tuple[Path, Path]:
    """A new virtual environment with the CPU torch and a copy of the project (``folders`` of it) installed with
    ``extras`` (``"[test]"``); its python and the copy."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    for requirement in (TORCH, f"{src}{extras}"):
        r = run(python, "-m", "pip", "install", "-q", requirement, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    return python, src


@pytest.mark.slow
def test_pip_install_without_extras_runs_every_command(tmp_path):
    python, _ = fresh_venv(tmp_path)
    venv, freezeout = python.parents[1], python.parent / "freezeout"
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


@pytest.mark.slow  # a fresh venv and the whole default suite in it: ~3-4 min
def test_the_test_extra_alone_gives_a_green_suite(tmp_path):
    python, src = fresh_venv(tmp_path, "[test]", folders=("freezeout", "tests", "docs", "benchmarks", ".ci"))
    for name in ("Makefile", "CONTRIBUTING.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    missing = run(python, "-c", "import lightning", cwd=src)
    assert missing.returncode != 0  # the extras really are absent
    r = run(python, "-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider", cwd=src)
    assert r.returncode == 0, r.stdout[-3000:]
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert any("[lightning] extra" in line for line in skips) and any("[transformers] extra" in line for line in skips)
