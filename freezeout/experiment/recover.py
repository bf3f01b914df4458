"""What a resume finds beside the checkpoint, checked: ``metrics.jsonl`` and ``config.json``, repaired or refused.

Every epoch's line must survive a resume. A torn last line (a kill, a full disk, a crash of the file system) is
the checkpoint's own epoch at most, and the checkpoint holds that epoch's record: it is written back from
there. Lines past the checkpoint are of epochs that will be redone, and go. An earlier epoch with no readable
line cannot be recovered, and the resume is refused rather than continue with a hole in the metrics. A
``config.json`` that does not say what the checkpoint (or a finished run's summary) says is rewritten from it.
Each repair is one line for the user (the caller's ``notify``), naming the file and what was done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from .config import config_differences
from .runfiles import CONFIG, METRICS, atomic_bytes, atomic_json

__all__ = ["ResumeError", "read_jsonl", "repair_config", "repair_metrics"]


class ResumeError(ValueError):
    """The run in out_dir cannot be resumed: no checkpoint, a torn one, one of another config, or lost metrics."""


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of ``path`` that are whole JSON objects, and how many lines are not (none for a missing file)."""
    records, bad = [], 0
    if not path.exists():
        return records, bad
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            bad += 1
    return records, bad


def _epochs(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"epochs 1-3, 5"``."""
    spans: list[list[int]] = []
    for e in numbers:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
    return ("epochs " if len(numbers) > 1 else "epoch ") + text


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def repair_metrics(
    out: Path, epoch: int, last: Any, source: str, *, finished: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """Make ``out/metrics.jsonl`` one line per epoch ``1..epoch``, as the checkpoint (``source``, of ``epoch``
    epochs, whose record of its last epoch is ``last``) left them; returns those records and the line to show
    (``None`` when nothing was lost or recovered).

    ``ResumeError`` when an epoch before the last has no readable line: it cannot be rebuilt, and training on
    would leave a hole. For a ``finished`` run there is nothing left to train: the loss is reported instead.
    """
    path = out / METRICS
    records, bad = read_jsonl(path)
    by_epoch: dict[int, dict[str, Any]] = {}
    for r in records:
        e = r.get("epoch")
        if isinstance(e, int) and 1 <= e <= epoch:
            by_epoch[e] = r  # a repeated epoch (a hand-made file): its last line, as the last write
    notes = []
    if epoch >= 1 and epoch not in by_epoch and isinstance(last, dict) and last.get("epoch") == epoch:
        by_epoch[epoch] = dict(last)
        how = "torn" if bad else "missing"
        notes.append(f"{path}: the line of epoch {epoch} was {how}; recovered it from {source}")
        bad = max(0, bad - 1)  # a torn line was this epoch's
    missing = [e for e in range(1, epoch + 1) if e not in by_epoch]
    if missing and not finished:
        raise ResumeError(
            f"cannot resume {out}: {path.name} has no readable line for {_epochs(missing)} of the {epoch} in "
            f"{source}; restore the file, or train afresh in another folder"
        )
    if missing:
        notes.append(f"{path}: no readable line for {_epochs(missing)} (lost; the run had finished)")
    elif bad:
        notes.append(f"{path}: dropped {bad} unreadable line(s); every epoch up to {epoch} is there")
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    if kept != records or bad or not path.exists():
        _write_records(path, kept)
    return kept, "; ".join(notes) or None


def repair_config(out: Path, config: dict[str, Any], source: str) -> str | None:
    """Make ``out/config.json`` say ``config`` (what ``source`` was trained with); the line to show, if it did not."""
    path = out / CONFIG
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        held, why = None, "missing"
    except (OSError, ValueError) as exc:
        held, why = None, f"unreadable ({type(exc).__name__})"
    else:
        why = "not a run's config" if not isinstance(held, dict) or not isinstance(held.get("config"), dict) else ""
    if held is not None and not why:
        try:
            differ = config_differences(held["config"], config)
        except (TypeError, ValueError, AttributeError) as exc:  # a hand-edited value of the wrong type
            differ = [f"{type(exc).__name__}"]
        if not differ:
            return None  # the same run, however spelt (config.run_identity)
        why = f"at odds with {source} ({'; '.join(differ)})"
    version = held.get("version", __version__) if isinstance(held, dict) else __version__
    atomic_json(path, {"config": config, "version": version})
    return f"{path} was {why}; rewritten from {source}"
