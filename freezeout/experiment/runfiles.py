"""Files of a run directory, written so that a killed run leaves nothing half-written.

Every write goes to a temp file in the same folder, named ``.<target>.<random>.freezeout-tmp`` (a name only
freezeout writes), then is fsynced and renamed into place. A write killed before its rename leaves that temp
file; ``remove_stale_temps`` removes those, and nothing else, while holding the folder's run lock
(``freezeout.experiment.lock``), so it can never take the temp file of a write still in flight. Files are
created with mode ``0o666`` less the umask (0644 under the usual 022), like any file a program creates.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .lock import holds_lock

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "TEMP_SUFFIX",
    "WriteError",
    "append_jsonl",
    "atomic_bytes",
    "atomic_json",
    "atomic_torch_save",
    "check_creatable",
    "check_writable",
    "read_json",
    "remove_stale_temps",
    "truncate_jsonl",
]


# The files of a run folder (docs/CLI.md, "freezeout train"): the resolved config at the start, one JSON line per
# epoch, the checkpoint after every epoch, and the summary whose presence means the run finished.
CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"

TEMP_SUFFIX = ".freezeout-tmp"


class WriteError(OSError):
    """A write of ``path`` failed: its message names the file asked for, never the temp file it went through
    (a name the user never gave), and keeps the cause's ``errno`` (``ENOSPC``: the disk is full); ``hint``: what
    the caller knows of what is kept and what to do, after the cause."""

    def __init__(self, path: str | os.PathLike, cause: OSError, hint: str = "") -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.filename, self.hint = str(path), hint

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}" + (f"; {self.hint}" if self.hint else "")


def _before_replace(path: Path) -> None:
    """Called in every atomic write of ``path`` between writing its temp file and renaming it into place. Does
    nothing: a seam where the tests wait, so that a kill -9 lands inside a write (else a window of microseconds)."""


def _create_temp(folder: Path, stem: str) -> tuple[int, str]:
    """A new file ``.<stem>.<random>.freezeout-tmp`` in ``folder``, opened for writing.

    Not ``mkstemp``: its files are 0600 whatever the umask. ``O_CREAT`` with 0o666 lets the kernel apply the
    umask (and a default ACL), as for any other file; ``O_EXCL`` keeps the name ours alone.
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")


def _atomic(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder, fsync, then ``os.replace``: readers see old or new, never half.
    An ``OSError`` comes out as ``WriteError`` naming ``path``."""
    try:
        fd, tmp = _create_temp(path.parent, path.name)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            _before_replace(path)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
        raise


def atomic_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here, so that the sweep's table and plots need no torch import

    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line per record, on disk before returning (a crash loses at most the line being written)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise WriteError(path, exc) from None


def truncate_jsonl(path: Path, keep: Any) -> list[dict[str, Any]]:
    """Keep the complete lines whose record passes ``keep`` (drops a torn last line); rewrite atomically."""
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and keep(record):
                records.append(record)
    _atomic(path, lambda f: f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()))
    return records


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temp files that killed writes left in ``out`` (they never replaced anything): only files named
    as ``_atomic`` names them. The caller must hold ``out``'s run lock, or another process's write in flight
    could lose its temp file."""
    if not holds_lock(out):
        raise RuntimeError(f"remove_stale_temps({out}) without holding its run lock")
    stale = [p for p in out.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable(out: Path, name: str = "out_dir") -> None:
    """Create ``out`` if needed and prove a file can be written there; ``ValueError`` naming it as ``name``
    otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(out, "write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"{name} {out} is not writable: {exc.strerror or exc}") from None


def check_creatable(out: Path, name: str = "out_dir") -> None:
    """What ``check_writable`` proves, without creating anything (a dry run): ``out`` is a writable folder, or
    could be created in its nearest existing parent."""
    here = Path(os.path.abspath(out))
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ValueError(f"{name} {out} is not writable: {here} is not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {out} is not writable: {here} is read-only")
