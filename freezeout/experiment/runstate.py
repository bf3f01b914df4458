"""A run folder's state as a sweep sees it: finished (and the point's result), interrupted, or new.

Kept apart from ``sweep`` so that what trains a sweep's runs (``sweep``, ``lockstep``) reads it from below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import config_differences
from .runfiles import CHECKPOINT, CONFIG, METRICS, SUMMARY, remove_stale_temps

__all__ = ["clear_run", "read_summary", "run_status"]


def read_summary(run_dir: str | os.PathLike, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's summary if it finished (valid JSON object with ``finished: true`` and a config dict), else
    ``None``; with ``expected`` (a run config dict), also ``None`` unless the summary's config has those values:
    a summary copied in, or left from another config, is not this point's result."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("finished") is not True:
        return None
    config = summary.get("config")
    if not isinstance(config, dict):
        return None
    if expected is not None:
        device = summary.get("device") if isinstance(summary.get("device"), str) else None
        try:
            if config_differences(config, {**config, **expected}, device):
                return None
        except (TypeError, ValueError, AttributeError):  # a hand-edited config: not this point's result
            return None
    return summary


def run_status(run_dir: str | os.PathLike, expected: dict[str, Any] | None = None) -> str:
    """``"finished"``, ``"interrupted"`` (a checkpoint to resume from) or ``"new"``. A finished run's summary
    must match ``expected`` (see ``read_summary``); otherwise, like a torn checkpoint, it is redone."""
    if read_summary(run_dir, expected) is not None:
        return "finished"
    return "interrupted" if (Path(run_dir) / CHECKPOINT).is_file() else "new"


def clear_run(run_dir: Path) -> None:
    """Remove what the trainer wrote in ``run_dir`` (not the lock, nor a file of the user's); lock held."""
    for name in (SUMMARY, CHECKPOINT, METRICS, CONFIG):
        (run_dir / name).unlink(missing_ok=True)
    remove_stale_temps(run_dir)
