"""Real second processes for the lock tests: a bare lock holder, and ``freezeout`` paused inside a write."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.seams import SCRIPT

ROOT = Path(__file__).resolve().parents[2]

_HOLD = """
import sys
from freezeout.experiment.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin, or kills us
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def lock_holder(folder: Path) -> Iterator[subprocess.Popen]:
    """A process holding ``folder``'s run lock for the block (killed after, if the test did not kill it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stdout.close()


def start_paused(args: list[str], pause: float) -> subprocess.Popen:
    """``freezeout *args`` whose atomic writes each wait ``pause`` s before their rename (logged; helpers.seams)."""
    return subprocess.Popen(
        [sys.executable, SCRIPT, "--pause", str(pause), *args],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_write(proc: subprocess.Popen, name: str) -> None:
    """Read ``proc``'s log until it is inside a write of ``name`` (its temp file written, not yet renamed)."""
    for line in proc.stderr:
        if "test pause" in line and f"writing {name}," in line:
            return
    raise AssertionError(f"the process ended (rc {proc.wait()}) before writing {name}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Its exit status and the rest of its stderr."""
    err = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(timeout=timeout), err
