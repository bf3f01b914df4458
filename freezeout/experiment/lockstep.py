"""A sweep's runs of one seed trained side by side, step by step, so that their times compare fairly.

Runs that follow each other see different phases of a shared machine's speed, which drifts over minutes (docs/
BENCHMARKS.md, "Notes behind the defaults"); a FreezeOut run timed an hour after its baseline measures the drift as
much as FreezeOut. Here every run of a seed (its baseline, its shortened baselines, its FreezeOut runs) trains in
one process, in lockstep (``analysis.runs.lockstep``): step ``s`` of every run, then step ``s + 1`` of every run, in
an order that rotates each step, each step timed on its own between device syncs. A run's ``train_seconds`` is the
sum of its own steps' seconds, and every run's step ``s`` ran within one round of every other's. Evaluation runs
between epochs, outside the timing; a shortened baseline leaves the lockstep when its fewer epochs are done.

Each run is an ordinary trainer run in its own folder (locked, resumable): an interrupted group continues, and a run
that fell behind (a kill between two runs' checkpoints) first catches up alone, its epoch marked ``"lockstep":
false`` in its ``metrics.jsonl``. Every run is the same computation as when trained alone (its own model, optimizer,
generator and data order): only the timing differs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.runs import lockstep
from .engine import task_loss
from .launch import SingleProcess, launch_from_env
from .lock import run_lock
from .recover import ResumeError
from .runstate import clear_run, read_summary, run_status
from .session import Session
from .trainer import open_run

__all__ = ["run_lockstep", "train_together"]

log = logging.getLogger(__name__)


def _open(held: contextlib.ExitStack, config: Any, run_dir: Path, status: str) -> Session | dict:
    """The run in ``run_dir`` opened for the group: resumed if interrupted, started over if it cannot be."""
    if status == "new":
        clear_run(run_dir)
    try:
        return held.enter_context(open_run(config, run_dir, resume=status == "interrupted", launch=SingleProcess()))
    except ResumeError as exc:  # a torn checkpoint, or files of another config: redo the run
        log.warning("%s cannot be resumed (%s): starting it over", run_dir.name, exc)
        clear_run(run_dir)
        return held.enter_context(open_run(config, run_dir, resume=False, launch=SingleProcess()))


def _warm_up(sessions: list[Session]) -> None:
    """One untimed forward and backward of a copy of a model on its first evaluation batch: the process's
    first-call costs (thread pools, kernel choices, the allocator's first blocks) would otherwise land in the
    first run's first step. The runs of a sweep share their model's shapes, so one model warms all. A copy: the
    runs are left as they were."""
    if sessions:
        x, y = next(iter(sessions[0].run.eval_sets["test"]))
        task_loss(copy.deepcopy(sessions[0].run.model)(x), y).backward()


def train_together(sessions: dict[str, Session], on_epoch: Callable[[str, dict], None] | None = None) -> None:
    """Every epoch left of ``sessions``, in lockstep while they are at one epoch (see the module doc); a run
    behind the others catches up alone first. ``on_epoch(name, record)`` after each run's epoch."""
    steps = {s.run.steps_per_epoch for s in sessions.values()}
    if len(steps) > 1:
        raise ValueError(f"runs in lockstep need one number of steps per epoch, got {sorted(steps)}")
    _warm_up(list(sessions.values()))
    while True:
        active = {n: s for n, s in sessions.items() if not s.done}
        if not active:
            return
        behind = min(s.epoch for s in active.values())
        lagging = {n: s for n, s in active.items() if s.epoch == behind}
        if len(lagging) < len(active):
            for name, s in lagging.items():
                log.info("%s catches up epoch %d alone (timed alone)", name, behind + 1)
                record = s.end_epoch(s.train_epoch(), lockstep=False)
                if on_epoch is not None:
                    on_epoch(name, record)
            continue
        runs = list(active.values())
        gens = [s.epoch_steps() for s in runs]
        seconds = lockstep([g.__next__ for g in gens], next(iter(steps)), runs[0].run.device)
        for g in gens:
            g.close()  # suspended after its last step: nothing is left to run in it
        for (name, s), took in zip(active.items(), seconds):
            record = s.end_epoch(sum(took), lockstep=True)
            if on_epoch is not None:
                on_epoch(name, record)


def _progress(bar: Any, seed: int, sessions: dict[str, Session]) -> Callable[[str, dict], None]:
    """``train_together``'s ``on_epoch`` for a bar over runs: the epoch in its info, a tick per finished run."""

    def on_epoch(name: str, rec: dict) -> None:
        if bar is not None:
            s = sessions[name]
            bar.set_info(f"seed {seed}: {name} epoch {rec['epoch']}/{s.run.config.epochs}")
            if s.done:
                bar.update(1)

    return on_epoch


def _open_group(
    group: list[tuple[str, dict[str, Any]]], sweep_dir: Path, make_config: Callable, held: contextlib.ExitStack
) -> dict[str, Session | dict]:
    """Each run of ``group`` (name, expected config) locked for the block and opened: a ``Session``, or the summary
    of a finished run."""
    opened: dict[str, Session | dict] = {}
    for name, expected in group:
        run_dir = sweep_dir / name
        held.enter_context(run_lock(run_dir))  # held to the end: nobody else may change the run meanwhile
        status = run_status(run_dir, expected)
        if status == "finished":
            opened[name] = read_summary(run_dir, expected)
        else:
            log.info("%s: %s", name, "resuming" if status == "interrupted" else "starting")
            opened[name] = _open(held, make_config(expected), run_dir, status)
    return opened


def run_lockstep(
    runs: list[tuple[str, int, dict[str, Any]]],
    sweep_dir: Path,
    make_config: Callable[[dict[str, Any]], Any],
    bar: Any = None,
) -> dict[str, dict]:
    """Train ``runs`` (name, seed, the run's config dict) into ``sweep_dir``, one seed's runs at a time in lockstep;
    finished runs are read back. Returns every run's summary by name."""
    if launch_from_env().world_size > 1:
        raise ValueError("a sweep in lockstep trains in one process: run it without torchrun")
    summaries: dict[str, dict] = {}
    for seed in dict.fromkeys(s for _, s, _ in runs):
        with contextlib.ExitStack() as held:
            group = [(name, expected) for name, s, expected in runs if s == seed]
            opened = _open_group(group, sweep_dir, make_config, held)
            sessions = {n: s for n, s in opened.items() if isinstance(s, Session)}
            if sessions:
                train_together(sessions, _progress(bar, seed, sessions))
            for name, s in opened.items():
                summaries[name] = s.finish() if isinstance(s, Session) else s
                if bar is not None and not isinstance(s, Session):
                    bar.update(1)
    return summaries
