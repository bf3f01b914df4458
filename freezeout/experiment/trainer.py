"""The paper's experiment as a function: train a model with FreezeOut and write the run's results."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..measure import sync
from . import engine
from .config import TrainConfig
from .data import load_dataset
from .engine import EVAL_BATCH, NonFiniteLossError, evaluate
from .launch import Launch, launch_from_env
from .lock import run_lock
from .runfiles import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    SUMMARY,
    append_jsonl,
    atomic_json,
    atomic_torch_save,
    check_writable,
    read_json,
    remove_stale_temps,
    truncate_jsonl,
)

__all__ = ["EVAL_BATCH", "NonFiniteLossError", "ResumeError", "evaluate", "train"]

log = logging.getLogger(__name__)


class ResumeError(ValueError):
    """The run in out_dir cannot be resumed: no checkpoint, a torn one, or one of another config."""


def _load_checkpoint(path: Path, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise ResumeError(f"cannot resume: no checkpoint in {path.parent} (nothing was trained there yet)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(ckpt["config"])
    except Exception as exc:  # a torn or foreign file: say which, in one line
        raise ResumeError(f"cannot resume from {path}: not a readable checkpoint ({type(exc).__name__})") from None
    _same_config(saved, ckpt.get("device"), config, device, path)  # older checkpoints lack "device"
    return ckpt


def _finished_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = read_json(path)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and summary.get("finished") is True else None


def _same_config(saved: TrainConfig, saved_device: Any, config: TrainConfig, device: torch.device, where: Path) -> None:
    differ = saved.differences(
        config, device=saved_device if isinstance(saved_device, str) else None, other_device=str(device)
    )
    if differ:
        raise ResumeError(f"cannot resume {where}: it was run with a different config ({'; '.join(differ)})")


def _progress_bar(run: engine.Run, epoch: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # only when a bar shows

    bar = tqdm(total=run.total_steps, initial=run.sched.step_count, unit="step", dynamic_ncols=True, leave=False)
    bar.set_postfix_str(f"epoch={epoch + 1}/{run.config.epochs} loss=? frozen={run.sched.num_frozen}")
    return bar


def train(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = False) -> dict:
    """Train; write into out_dir: config.json (at start), metrics.jsonl (one JSON object per epoch),
    checkpoint.pt (after every epoch, atomic), summary.json (atomic, written last: its presence means
    the run finished). resume=True continues from checkpoint.pt (ValueError if its config differs).
    Returns the summary dict.

    Everything that can fail on bad input (config, data, model, a checkpoint to resume, a writable
    ``out_dir``) is checked before the first file is written.

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
        summary = _train(config.validate(), Path(out_dir), resume, progress, launch)
        ok = True
        return summary
    finally:
        launch.close(ok)


def _existing_run(
    out: Path, config: TrainConfig, resume: bool, device: torch.device, launch: Launch
) -> tuple[dict | None, dict | None]:
    """What ``out`` holds for this call: (the summary of a finished run to return, the checkpoint to resume)."""
    if resume and (out / SUMMARY).is_file():
        summary = _finished_summary(out / SUMMARY)
        if summary is not None:
            saved = TrainConfig.from_dict(summary.get("config", {}))
            _same_config(saved, summary.get("device"), config, device, out)
            launch.check_world_size(summary, out)
            return summary, None
        log.warning("%s is torn or unfinished (not written by this trainer): resuming", out / SUMMARY)
    if resume:
        ckpt = _load_checkpoint(out / CHECKPOINT, config, device)
        launch.check_world_size(ckpt, out)
        return None, ckpt
    if (out / CHECKPOINT).exists() or (out / SUMMARY).exists():
        raise ValueError(f"out_dir {out} already holds a run: resume it or choose another out_dir")
    return None, None


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, launch: Launch) -> dict:
    started = time.perf_counter()
    launch.batch_per_process(config.batch_size)
    with contextlib.ExitStack() as held:
        # A folder that exists may hold a run: lock it before reading anything there, so that a second process
        # is refused at once. A new one is created (and locked) only once the inputs have passed their checks.
        locked = launch.is_main and out.is_dir()
        if locked:
            held.enter_context(run_lock(out))
        device = launch.device(config.device)
        finished, ckpt = _existing_run(out, config, resume, device, launch)
        if finished is not None:
            log.info("%s already finished; nothing to resume", out)
            return finished
        if config.bf16 and device.type != "cuda":
            raise ValueError("bf16 autocast needs a CUDA device (device is cpu)")
        data = load_dataset(config.dataset, config.data_dir, config.val_split)
        launch.start(device)
        run = engine.Run(config, data, device, launch)
        launch.agree(check_writable, out)

        def lock_new_folder() -> None:  # on rank 0 only; launch.agree raises its refusal on every rank
            if not locked:
                held.enter_context(run_lock(out))
                _existing_run(out, config, resume, device, launch)  # another process may have run here meanwhile

        launch.agree(lock_new_folder)
        for stale in remove_stale_temps(out) if launch.is_main else ():
            log.info("removed %s, left by a write that was killed", stale)
        return _run(run, out, ckpt, progress, launch, started)


def _run(run: engine.Run, out: Path, ckpt: dict | None, progress: bool, launch: Launch, started: float) -> dict:
    """The training loop of ``_train``, with the inputs checked and the folder locked."""
    config, main, device = run.config, launch.is_main, run.device
    epoch, train_seconds, wall_before, last, skipped_total = 0, 0.0, 0.0, {}, 0
    if ckpt is not None:
        run.load(ckpt)
        epoch, train_seconds, wall_before, last = (
            ckpt["epoch"],
            ckpt["train_seconds"],
            ckpt["wall_seconds"],
            ckpt["last"],
        )
        skipped_total = ckpt.get("skipped_batches", 0)
        if main:
            truncate_jsonl(out / METRICS, lambda r: r.get("epoch", 0) <= epoch)  # lines past the checkpoint: redone
        log.info("resuming %s at epoch %d (step %d)", out, epoch, run.sched.step_count)
    elif main:
        atomic_json(out / CONFIG, {"config": config.to_dict(), "version": __version__})
        truncate_jsonl(out / METRICS, lambda r: False)  # a run killed before its first checkpoint: start over
    run.net = launch.wrap(run.model, run.sched)  # after loading: under torchrun, DDP over what still trains

    bar = _progress_bar(run, epoch, progress and main)
    loss_sum = torch.zeros((), device=device)
    n_train = run.train_batches.examples_per_pass * run.world_size  # all ranks' examples (padded ones too)
    label = f"epoch={epoch + 1}/{config.epochs} loss=?"
    try:
        while epoch < config.epochs:
            sync(device)
            t = time.perf_counter()
            skipped, skipped_examples = run.train_epoch(loss_sum, bar, label)
            sync(device)
            epoch_seconds = time.perf_counter() - t
            launch_record = launch.end_epoch(loss_sum)  # sums the loss over ranks
            used = n_train - skipped_examples * run.world_size  # every rank skips the same steps
            train_loss = loss_sum.item() / used if used else math.nan
            run.check_finite(epoch + 1, train_loss)  # before anything of a diverged epoch is written
            skipped_total += skipped
            t = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "step": run.sched.step_count, "train_loss": train_loss}
            for name, batches in run.eval_sets.items() if main else ():
                loss, acc = evaluate(run.model, batches, config.bf16)
                record.update({f"{name}_loss": loss, f"{name}_error": 1 - acc, f"{name}_accuracy": acc})
            sync(device)
            record["eval_seconds"] = time.perf_counter() - t
            record.update(epoch_seconds=epoch_seconds, num_frozen=run.sched.num_frozen, lr=run.lr_summary())
            record.update(launch_record)
            record["skipped_batches"] = skipped
            epoch, train_seconds, last = epoch + 1, train_seconds + epoch_seconds, record
            wall = wall_before + time.perf_counter() - started
            if main:
                append_jsonl(out / METRICS, record)  # before the checkpoint: a resume truncates what it redoes
                extra = {"train_seconds": train_seconds, "wall_seconds": wall, "last": record}
                extra["skipped_batches"] = skipped_total
                atomic_torch_save(out / CHECKPOINT, run.state(epoch, extra))
            last = record = launch.share(record)  # the others wait for rank 0's files and take its record
            log.info(
                "epoch %d/%d loss %.4f test error %.4f frozen %d/%d (%.1f s)",
                epoch, config.epochs, train_loss, record["test_error"], record["num_frozen"], len(run.layers),
                epoch_seconds,
            )  # fmt: skip
            label = f"epoch={min(epoch + 1, config.epochs)}/{config.epochs} loss={train_loss:.3f}"
            if bar is not None:
                bar.set_postfix_str(f"{label} frozen={run.sched.num_frozen}")
    finally:
        if bar is not None:
            bar.close()

    summary = {
        "config": config.to_dict(),
        "version": __version__,
        "epochs": config.epochs,
        "steps_per_epoch": run.steps_per_epoch,
        "total_steps": run.total_steps,
        "num_layers": len(run.layers),
        "num_frozen": run.sched.num_frozen,
        "skipped_batches": skipped_total,
        **{k: v for k, v in last.items() if k.startswith(("test_", "val_"))},
        "train_seconds": train_seconds,
        "wall_seconds": wall_before + time.perf_counter() - started,
        "device": str(device),
        "world_size": run.world_size,
        "finished": True,
    }
    if main:
        atomic_json(out / SUMMARY, summary)
    launch.dump_state()
    return launch.share(summary)
