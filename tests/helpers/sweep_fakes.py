"""A stand-in for ``freezeout.experiment.trainer.train`` that writes the same run files with known numbers.

It lets the sweep's skip/resume logic be tested in milliseconds; the real trainer is tested in its own
files and end to end by the CLI kill test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fake_error(t0: float, seed: int) -> float:
    return 0.1 + 0.05 * (1 - t0) + 0.01 * seed


def fake_seconds(t0: float, seed: int) -> float:
    return 10.0 * (0.5 + 0.5 * t0) + seed


class FakeTrainer:
    """Calls are recorded as (run name, resume). ``stop_after`` = (run name, epochs): that run "dies"
    (raises KeyboardInterrupt) once it has checkpointed that many epochs."""

    def __init__(self, stop_after: tuple[str, int] | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.stop_after = stop_after

    def __call__(self, config: Any, out_dir: Any, *, resume: bool = False, progress: bool = False) -> dict:
        c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        out = Path(out_dir)
        self.calls.append((out.name, resume))
        start = 0
        if resume:  # like the trainer: a torn checkpoint, or a summary of another config, cannot be resumed
            from freezeout.experiment.recover import ResumeError

            try:
                summary = json.loads((out / "summary.json").read_text())
            except (OSError, ValueError):  # none, or torn: resume from the checkpoint
                summary = None
            if isinstance(summary, dict) and summary.get("finished") is True:
                if summary.get("config") != c:
                    raise ResumeError(f"cannot resume {out}: it was run with a different config")
                return summary
            try:
                start = json.loads((out / "checkpoint.pt").read_text())["epoch"]
            except ValueError:
                raise ResumeError(f"cannot resume from {out}: not a readable checkpoint") from None
        else:
            if (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
                raise ValueError(f"out_dir {out} already holds a run")
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps({"config": c}))
        for epoch in range(start + 1, c["epochs"] + 1):
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch}) + "\n")
            (out / "checkpoint.pt").write_text(json.dumps({"epoch": epoch}))
            if self.stop_after == (out.name, epoch):
                self.stop_after = None
                raise KeyboardInterrupt
        summary = {
            "config": c,
            "epochs": c["epochs"],
            "test_error": fake_error(c["t0"], c["seed"]),
            "train_seconds": fake_seconds(c["t0"], c["seed"]),
            "finished": True,
        }
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
