"""A plain ``pip install`` (no extras) into a fresh virtual environment gives a working ``freezeout`` command, a
wheel built from the checkout as the README says runs the demo, ``pip install '.[test]'`` alone gives a green suite
(what needs another extra skipped, saying which), and ``make venv`` asks PyTorch's CPU index for torch only where
that is right and quick (``tools/torch_index.py``)."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The Makefile's requirement. On the machines of this project pip resolves it to a CPU build on disk (tests do not
# reach PyTorch's index); tools/torch_index.py is tested on its own below.
TORCH = "torch==2.13.0"
TOOL = ROOT / "tools" / "torch_index.py"


def run(*cmd: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def copy_project(tmp_path: Path, folders: tuple[str, ...] = ("freezeout",)) -> Path:
    """A copy of the project (``folders`` of it): building in the checkout would leave build/ and *.egg-info there."""
    src = tmp_path / "src"
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


def fresh_venv(
    tmp_path: Path, extras: str = "", folders: tuple[str, ...] = ("freezeout",), install: str = ""
) -> tuple[Path, Path]:
    """A new virtual environment with torch and a copy of the project (``folders`` of it) installed with ``extras``
    (``"[test]"``), or ``install`` instead of the copy (a wheel); its python and the copy."""
    src = copy_project(tmp_path, folders)
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    for requirement in (TORCH, install or f"{src}{extras}"):
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
    python, src = fresh_venv(tmp_path, "[test]", folders=("freezeout", "tests", "docs", "benchmarks", ".ci", "tools"))
    for name in ("Makefile", "CONTRIBUTING.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    missing = run(python, "-c", "import lightning", cwd=src)
    assert missing.returncode != 0  # the extras really are absent
    r = run(python, "-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider", cwd=src)
    assert r.returncode == 0, r.stdout[-3000:]
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert any("[lightning] extra" in line for line in skips) and any("[transformers] extra" in line for line in skips)


@pytest.mark.slow  # a wheel built, a fresh venv, a short demo: ~1-2 min
def test_a_wheel_built_from_the_checkout_runs_the_demo(tmp_path):
    build = "pip wheel --no-deps . -w dist"  # the README's commands, run as written
    assert (
        build in (ROOT / "README.md").read_text()
        and "pip install dist/freezeout-*.whl" in (ROOT / "README.md").read_text()
    )
    src = copy_project(tmp_path / "build")
    r = run(sys.executable, "-m", *build.split(), cwd=src)
    assert r.returncode == 0, r.stderr
    (wheel,) = (src / "dist").glob("freezeout-*.whl")
    python, _ = fresh_venv(tmp_path, install=str(wheel))
    demo = run(python.parent / "freezeout", "demo", "--epochs", "2", "--out", tmp_path / "demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "FreezeOut (cubic, scaled, t0=0.8)" in demo.stdout and "saving" in demo.stdout
    where = run(python, "-c", "import freezeout; print(freezeout.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(python.parents[1])), where.stdout  # the wheel's copy, not the checkout


def torch_index():
    spec = importlib.util.spec_from_file_location("torch_index", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # a package index's page, for any path
        self.send_response(200 if self.path.endswith("/torch/") else 404)
        self.end_headers()
        self.wfile.write(b"<a href='torch-2.13.0+cpu.whl'>torch</a>")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler=Index):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def choose(index: str, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run([sys.executable, TOOL, index], capture_output=True, text=True, env=env, timeout=60)


def no_gpu_path(tmp_path: Path, gpu: bool) -> str:
    """A PATH with (``gpu``) or without an ``nvidia-smi`` that lists a GPU, and nothing else of this machine's."""
    bin_dir = tmp_path / ("gpu" if gpu else "nogpu")
    bin_dir.mkdir()
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    return str(bin_dir)


def test_make_asks_the_cpu_index_only_without_a_cuda_gpu(tmp_path):
    with serving() as index:
        without = choose(index, no_gpu_path(tmp_path, gpu=False))
        assert (without.returncode, without.stdout) == (0, f"--index-url {index}\n"), without.stderr
        assert f"no CUDA GPU here, so the CPU build from {index}" in without.stderr
        with_gpu = choose(index, no_gpu_path(tmp_path, gpu=True))
        assert (with_gpu.returncode, with_gpu.stdout) == (0, ""), with_gpu.stderr  # the plain requirement: CUDA's
        assert "a CUDA GPU is here" in with_gpu.stderr


def test_an_index_that_cannot_be_reached_or_hangs_costs_seconds_not_minutes(tmp_path):
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = choose(f"http://127.0.0.1:{port}", no_gpu_path(tmp_path, gpu=False))
    assert (refused.returncode, refused.stdout) == (0, "") and "could not be reached within 5 s" in refused.stderr
    tool = torch_index()
    hang = socket.socket()  # accepts the connection, never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen()
    try:
        started = time.monotonic()
        assert tool.answers(f"http://127.0.0.1:{hang.getsockname()[1]}/torch/", timeout=0.5) is False
        assert time.monotonic() - started < 2
    finally:
        hang.close()
    with serving() as index:
        assert tool.answers(index + "/torch/", timeout=5) and not tool.answers(index + "/other/", timeout=5)
