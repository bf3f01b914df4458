"""One kind of run per folder: a ``train`` run, a ``sweep`` or a ``demo``, told apart by the files each writes.

A folder that holds one kind is refused by the others, in one line: a sweep writing its runs beside a finished
``train`` run would read that run's files as its own (and report a demo's finished runs as "unfinished"). Each
kind writes its marker at its start (a train run's ``config.json``, ``sweep.json``, ``demo.json``), so a run
killed early is still known by its kind. Files the user put in a folder mark nothing: such a folder is free.
"""

from __future__ import annotations

import os
from pathlib import Path

from .runfiles import CHECKPOINT, CONFIG, METRICS, SUMMARY

__all__ = ["DEMO_FILE", "KINDS", "SWEEP_FILE", "check_folder", "check_not_file", "folder_kind"]

SWEEP_FILE = "sweep.json"
DEMO_FILE = "demo.json"
# kind -> the files whose presence says a folder holds that kind (any one of them)
KINDS: dict[str, tuple[str, ...]] = {
    "train": (CONFIG, CHECKPOINT, SUMMARY, METRICS),
    "sweep": (SWEEP_FILE,),
    "demo": (DEMO_FILE,),
}
_NAMES = {"train": "train run", "sweep": "sweep", "demo": "demo"}


def folder_kind(folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(kind, marker)`` of the run ``folder`` holds (the first marker file found), or ``None``."""
    folder = Path(folder)
    for kind, markers in KINDS.items():
        for name in markers:
            if (folder / name).is_file():
                return kind, name
    return None


def check_not_file(folder: str | os.PathLike) -> None:
    """``ValueError`` if ``folder`` is a file (or anything else that is not a folder)."""
    if os.path.lexists(folder) and not Path(folder).is_dir():
        raise ValueError(f"{folder} is a file, not a folder: choose another --out")


def check_folder(folder: str | os.PathLike, kind: str) -> None:
    """``ValueError`` unless ``folder`` can hold a ``kind`` run: it is missing, empty of runs, or holds that kind.

    One wording per refusal, whichever command refuses: a file where a folder belongs, or another kind's files.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    folder = Path(folder)
    check_not_file(folder)
    found = folder_kind(folder) if folder.is_dir() else None
    if found is not None and found[0] != kind:
        other, marker = found
        raise ValueError(
            f"{folder} holds a {_NAMES[other]} (its {marker}), not a {_NAMES[kind]}: a folder holds one kind of "
            "run; choose another --out"
        )
