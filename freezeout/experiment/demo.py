"""The demo: the baseline and the paper's recommended FreezeOut on the embedded digits, as a small table."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .lock import run_lock
from .runfiles import CHECKPOINT, atomic_json, remove_stale_temps
from .trainer import train

__all__ = ["DEMO", "RUNS", "run_demo", "table"]

# About a minute for both runs on one CPU core, ~99% test accuracy: depth 40 = 6 dense layers per block
# (21 freezable layers), k = 12, 20 epochs of 30 steps on the 8 x 8 digits.
DEMO: dict[str, Any] = {"dataset": "digits", "depth": 40, "growth": 12, "epochs": 20, "batch_size": 50}
RUNS = (("baseline", {"t0": 1.0}), ("freezeout", {"t0": 0.8, "schedule": "cubic", "scale_lr": True}))


def table(summaries: dict[str, dict]) -> str:
    base = summaries["baseline"]["train_seconds"]
    lines = [f"{'run':<34} {'train s':>8} {'saving':>8} {'test acc':>9}"]
    for name, s in summaries.items():
        c = s["config"]
        what = "baseline (cosine, t0=1)" if name == "baseline" else f"FreezeOut ({c['schedule']}, scaled, t0={c['t0']})"
        saving = 1 - s["train_seconds"] / base
        lines.append(f"{what:<34} {s['train_seconds']:>8.1f} {saving:>8.1%} {s['test_accuracy']:>9.2%}")
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike,
    epochs: int,
    seed: int,
    progress: bool = False,
    on_start: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Train both runs into ``out/<name>`` (an interrupted demo continues, a finished one is read back) and
    write ``out/demo.json``; returns the summaries by run name. ``on_start(name)`` is called before each run."""
    out = Path(out)
    base = {**DEMO, "epochs": epochs, "seed": seed, "device": "cpu"}
    configs = {name: TrainConfig(**base, **opts).validate() for name, opts in RUNS}
    summaries = {}
    threads = torch.get_num_threads()
    # One thread: ops this small gain nothing from intra-op parallelism, and on a busy machine OpenMP
    # barriers wait for descheduled threads (measured on 2 shared cores: 9 ms per step vs 2 s).
    torch.set_num_threads(1)
    try:
        with run_lock(out):  # one demo per folder (each run's folder is locked by the trainer too)
            remove_stale_temps(out)
            for name, config in configs.items():
                if on_start is not None:
                    on_start(name)
                resume = (out / name / CHECKPOINT).exists()
                summaries[name] = train(config, out / name, resume=resume, progress=progress)
            atomic_json(out / "demo.json", summaries)
    finally:
        torch.set_num_threads(threads)
    return summaries
