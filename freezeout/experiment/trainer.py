"""The paper's experiment as a function: train a model with FreezeOut and write the run's results."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import engine
from .config import TrainConfig, fit_batch
from .data import load_dataset
from .folders import check_folder
from .launch import Launch, launch_from_env
from .lock import run_lock
from .recover import ResumeError, repair_config, repair_metrics
from .runfiles import CHECKPOINT, SUMMARY, check_writable, read_json, remove_stale_temps
from .session import Notify, Session, note

__all__ = ["open_run", "train"]

log = logging.getLogger(__name__)


def _load_checkpoint(path: Path, config: TrainConfig, device: torch.device, clip: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise ResumeError(f"cannot resume: no checkpoint in {path.parent} (nothing was trained there yet)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(ckpt["config"])
    except Exception as exc:  # a torn or foreign file: say which, in one line
        raise ResumeError(f"cannot resume from {path}: not a readable checkpoint ({type(exc).__name__})") from None
    _same_config(saved, ckpt.get("device"), config, device, path, clip)  # older checkpoints lack "device"
    return ckpt


def _finished_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = read_json(path)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and summary.get("finished") is True else None


def _same_config(
    saved: TrainConfig, saved_device: Any, config: TrainConfig, device: torch.device, where: Path, clip: bool = False
) -> None:
    """``ResumeError`` naming the fields in which ``config`` asks for another run than ``saved``. ``clip``: the
    data is not loaded yet, so a saved batch smaller than the one asked for may be that one clipped to the data
    (``config.fit_batch``); the caller checks the batch size again once it knows."""
    if clip and saved.batch_size < config.batch_size:
        config = replace(config, batch_size=saved.batch_size)
    differ = saved.differences(
        config, device=saved_device if isinstance(saved_device, str) else None, other_device=str(device)
    )
    if differ:
        raise ResumeError(
            f"cannot resume {where}: it was run with a different config ({'; '.join(differ)}); a run continues only "
            "with the config it started with: for the new one, choose another --out"
        )


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = False,
    notify: Notify | None = None,
) -> dict:
    """Train; write into out_dir: config.json (at start), metrics.jsonl (one JSON object per epoch),
    checkpoint.pt (after every epoch, atomic), summary.json (atomic, written last: its presence means
    the run finished). resume=True continues from checkpoint.pt (ValueError if its config differs).
    Returns the summary dict. ``progress``: a bar on a terminal and a line per epoch on stderr; ``notify(line)``:
    where the lines for the user go (a clipped batch, a resume, a repaired file), the log's warnings otherwise.

    Everything that can fail on bad input (config, data, model, a checkpoint to resume, a writable
    ``out_dir`` that holds no other kind of run) is checked before the first file is written.

    One process per ``out_dir``: the run holds its lock (``freezeout.experiment.lock``) and another process
    on the folder gets ``FolderLockedError`` naming it; at once for a folder that exists, after the input
    checks for a new one (which is created only then).

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; see ``freezeout.experiment.launch``: the
    batch size is global, rank 0 evaluates and writes the files and holds the lock, every rank returns the
    same summary.
    """
    launch = launch_from_env()
    ok = False
    try:
        with open_run(config, out_dir, resume=resume, launch=launch, notify=notify) as session:
            summary = session if isinstance(session, dict) else session.run_epochs(progress)
        ok = True
        return summary
    finally:
        launch.close(ok)


def _existing_run(
    out: Path, config: TrainConfig, resume: bool, device: torch.device, launch: Launch, clip: bool = False
) -> tuple[dict | None, dict | None]:
    """What ``out`` holds for this call: (the summary of a finished run to return, the checkpoint to resume).
    ``clip``: see ``_same_config``."""
    if resume and (out / SUMMARY).is_file():
        summary = _finished_summary(out / SUMMARY)
        if summary is not None:
            saved = TrainConfig.from_dict(summary.get("config", {}))
            _same_config(saved, summary.get("device"), config, device, out, clip)
            launch.check_world_size(summary, out)
            return summary, None
        log.warning("%s is torn or unfinished (not written by this trainer): resuming", out / SUMMARY)
    if resume:
        ckpt = _load_checkpoint(out / CHECKPOINT, config, device, clip)
        launch.check_world_size(ckpt, out)
        return None, ckpt
    if (out / CHECKPOINT).exists() or (out / SUMMARY).exists():
        raise ValueError(f"{out} already holds a train run: add --resume to continue it, or choose another --out")
    return None, None


def _check_finished(out: Path, summary: dict[str, Any], notify: Notify | None) -> None:
    """A finished run, asked to resume: its config.json and metrics.jsonl say what its summary says."""
    try:
        last = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True).get("last")
    except Exception:  # no checkpoint (removed after the run): an epoch's line cannot come back from it
        last = None
    _, fixed = repair_metrics(out, int(summary.get("epochs", 0)), last, CHECKPOINT, finished=True)
    for line in (fixed, repair_config(out, summary["config"], SUMMARY)):
        if line:
            note(notify, line)


@contextlib.contextmanager
def open_run(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    launch: Launch | None = None,
    notify: Notify | None = None,
) -> Iterator[Session | dict]:
    """The run ``train`` would start or resume in ``out_dir``, every input checked and the folder locked for the
    block: a ``Session`` to run, or the summary dict of a run that had finished (``resume`` only)."""
    started = time.perf_counter()
    launch = launch_from_env() if launch is None else launch
    config, out = config.validate(), Path(out_dir)
    check_folder(out, "train")
    with contextlib.ExitStack() as held:
        # A folder that exists may hold a run: lock it before reading anything there, so that a second process
        # is refused at once. A new one is created (and locked) only once the inputs have passed their checks.
        locked = launch.is_main and out.is_dir()
        if locked:
            held.enter_context(run_lock(out))
            check_folder(out, "train")  # again, now that nobody else can write there
        device = launch.device(config.device)
        finished, ckpt = _existing_run(out, config, resume, device, launch, clip=True)  # before the data's checks
        data = load_dataset(config.dataset, config.data_dir, config.val_split)
        config, clipped = fit_batch(config, data.num_train, launch.world_size)
        for saved in (s for s in (finished, ckpt) if s is not None):  # the batch size, now that it is known
            # clipped as well: a run of an older version recorded the batch asked for, and ran the clipped one
            ran, _ = fit_batch(TrainConfig.from_dict(saved["config"]), data.num_train, launch.world_size)
            _same_config(ran, saved.get("device"), config, device, out)
        launch.batch_per_process(config.batch_size)
        if finished is not None:
            log.info("%s already finished; nothing to resume", out)
            if clipped:
                note(notify, clipped)
            if launch.is_main:
                _check_finished(out, finished, notify)
            yield finished
            return
        if config.bf16 and device.type != "cuda":
            raise ValueError("bf16 autocast needs a CUDA device (device is cpu)")
        launch.start(device)
        run = engine.Run(config, data, device, launch)
        launch.agree(check_writable, out)

        def lock_new_folder() -> None:  # on rank 0 only; launch.agree raises its refusal on every rank
            if not locked:
                held.enter_context(run_lock(out))
                check_folder(out, "train")
                _existing_run(out, config, resume, device, launch)  # another process may have run here meanwhile

        launch.agree(lock_new_folder)
        for stale in remove_stale_temps(out) if launch.is_main else ():
            log.info("removed %s, left by a write that was killed", stale)
        if clipped:  # once every check has passed: a refusal is the one line the user sees
            note(notify, clipped)
        yield Session(run, out, launch, started, ckpt, notify)
