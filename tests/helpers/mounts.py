"""Real full disks and read-only folders for a ``freezeout`` process: a small tmpfs, or a read-only bind mount, in
a mount namespace of its own (``unshare``; no root needed where user namespaces are allowed, as on most Linux).

Where namespaces are not allowed the tests that need them skip; the in-process variants beside them still run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


@functools.cache
def namespaces_work() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run([*UNSHARE, "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", d], capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="no user and mount namespaces here (unshare)")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def freezeout_on_tmpfs(mount: Path, size: str, args: list[str], copy_to: Path) -> subprocess.CompletedProcess:
    """``python -m freezeout ARGS`` with a tmpfs of ``size`` mounted on ``mount`` (``{mnt}`` in ARGS names it);
    what it left there is copied to ``copy_to`` before the tmpfs goes."""
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 3 && "$@"; rc=$?; cp -a "$MNT/." "$COPY"; exit $rc'
    args = [a.replace("{mnt}", str(mount)) for a in args]
    mount.mkdir(parents=True, exist_ok=True)
    copy_to.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*UNSHARE, "sh", "-c", script, "sh", size, str(mount), "--", sys.executable, "-m", "freezeout", *args],
        capture_output=True,
        text=True,
        env={**env(), "MNT": str(mount), "COPY": str(copy_to)},
    )


def freezeout_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m freezeout ARGS`` with ``folder`` (made if missing) mounted read-only for it."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift 2 && "$@"'
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*UNSHARE, "sh", "-c", script, "sh", str(folder), "--", sys.executable, "-m", "freezeout", *args],
        capture_output=True,
        text=True,
        env=env(),
    )
