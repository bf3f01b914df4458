"""One freezeout process per run folder: an advisory ``flock`` on a lock file inside the folder.

The kernel drops an ``flock`` when its holder exits, however it ends (``kill -9`` included), so a killed run
resumes with no clean-up. The lock file is never deleted: a process that unlinked it while another waited on
the old inode would let a third create a new file and lock that, and two processes would both "hold" the folder.
It also records its holder (pid, host, start time, command), for the refusal message.

Locks are re-entrant within a process (a sweep holds its folder and each run's folder while the trainer takes
the run's again): the first ``run_lock`` of a folder opens and locks the file, nested ones only count.
Under torchrun only rank 0, the process that writes the files, takes the lock (``trainer.train``); when rank 0
fails on a held folder, torchrun ends the other ranks. ``flock`` works on local file systems and, on Linux,
on NFS (emulated with byte-range locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "FolderLockedError", "holds_lock", "run_lock"]

LOCK_FILE = ".freezeout.lock"

_held: dict[tuple[int, int], list[Any]] = {}  # (st_dev, st_ino) of a lock file -> [fd, depth]
_guard = threading.Lock()


class FolderLockedError(ValueError):
    """Another process holds the folder's lock: the message names it (pid, host, start time, command)."""


def _key(folder: Path) -> tuple[int, int] | None:
    try:
        st = (folder / LOCK_FILE).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def holds_lock(folder: str | os.PathLike) -> bool:
    """Whether this process holds ``folder``'s run lock."""
    key = _key(Path(folder))
    with _guard:
        return key is not None and key in _held


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    if Path(argv[0]).name == "__main__.py":  # python -m freezeout
        argv[0] = "python -m freezeout"
    text = " ".join([argv[0], *(shlex.quote(a) for a in argv[1:])])
    text = text.replace("\n", "\\n")
    return text if len(text) <= 300 else text[:297] + "..."


def _alive_here(info: dict[str, Any]) -> bool:
    """False when the recorded holder is a process of this host that no longer exists (a stale record)."""
    if info.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, KeyError):
        return True
    return True


def _holder(path: Path) -> str:
    """The holder's record as text; waits briefly for a holder that has the lock but has not written it yet."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(info, dict) and "pid" in info and _alive_here(info):
                return f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}: " + str(
                    info.get("command", "?")
                )
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return "holder unknown"
        time.sleep(0.02)


def _acquire(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    # 0o666: the umask decides, like every file of the run
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLockedError(
            f"{folder} is in use by another freezeout process ({_holder(path)}); wait for it to end or use "
            "another folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": _command()}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return fd


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s run lock inside the block (the folder is created if needed).

    Raises ``FolderLockedError`` (a ``ValueError``, one line naming the holder) at once if another process
    holds it; ``ValueError`` if the lock file cannot be created (a folder that is not writable).
    """
    folder = Path(folder)
    with _guard:
        key = _key(folder)
        entry = _held.get(key) if key is not None else None
        if entry is not None:
            entry[1] += 1
        else:
            try:
                fd = _acquire(folder)
            except OSError as exc:
                raise ValueError(f"cannot lock {folder}: {exc.strerror or exc}") from None
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            entry = _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                fcntl.flock(entry[0], fcntl.LOCK_UN)  # the file stays: see the module's docstring
                os.close(entry[0])
