"""One run from its first epoch (or the checkpoint it resumes from) to its summary: the epoch loop and its files.

``trainer.open_run`` checks the inputs and the folder and hands over a ``Session``; ``trainer.train`` runs its
epochs one after another (``run``), the demo runs two sessions' epochs in lockstep (``epoch_steps`` and
``end_epoch``). The files: ``config.json`` at the start, a ``metrics.jsonl`` line and then the checkpoint after
every epoch, ``summary.json`` last.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..analysis.timing import sync
from . import engine
from .engine import evaluate
from .launch import Launch
from .progress import ANNOUNCE, ESTIMATE_AFTER, Display, StepClock, epoch_line, estimate_line
from .recover import repair_config, repair_metrics
from .runfiles import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    SUMMARY,
    WriteError,
    append_jsonl,
    atomic_json,
    atomic_torch_save,
    truncate_jsonl,
)

__all__ = ["Notify", "Session"]

log = logging.getLogger(__name__)

Notify = Callable[[str], None]  # a line for the user (the command line prints it); None: the log has it


def note(notify: Notify | None, message: str, level: int = logging.WARNING) -> None:
    log.log(level if notify is None else logging.DEBUG, "%s", message)
    if notify is not None:
        notify(message)


def _finished(model: torch.nn.Module, launch: Launch) -> None:
    """Called in every process once its run finished, after the summary: a seam where the tests save each rank's
    final model state, to compare the ranks bit for bit. Does nothing."""


class Session:
    """A run's state between epochs (``epoch``, ``train_seconds``, ``records``...) and the writing of its files."""

    def __init__(
        self, run: engine.Run, out: Path, launch: Launch, started: float, ckpt: dict | None, notify: Notify | None
    ) -> None:
        self.run, self.out, self.launch, self.started, self.notify = run, out, launch, started, notify
        self.main, config = launch.is_main, run.config
        self.epoch, self.train_seconds, self.wall_before, self.skipped_total = 0, 0.0, 0.0, 0
        self.last: dict[str, Any] = {}
        self.estimated = False  # the run's length said once, on the first steps this process runs
        self.records: list[dict[str, Any]] = []  # rank 0's: every epoch's metrics line, resumed ones included
        if ckpt is not None:
            run.load(ckpt)
            self.epoch, self.train_seconds, self.last = ckpt["epoch"], ckpt["train_seconds"], ckpt["last"]
            self.wall_before, self.skipped_total = ckpt["wall_seconds"], ckpt.get("skipped_batches", 0)
            if self.main:
                self.records, fixed = repair_metrics(out, self.epoch, self.last, CHECKPOINT)
                for line in (fixed, repair_config(out, ckpt["config"], CHECKPOINT)):
                    if line:
                        note(notify, line)
            done = f"after epoch {self.epoch} of {config.epochs}, step {run.sched.step_count}"
            last = f"epoch {config.epochs} of {config.epochs} is done, writing its summary"
            note(notify, f"resuming {out} from epoch {self.epoch + 1} of {config.epochs} ({done})"
                 if self.epoch < config.epochs else f"resuming {out}: {last}", logging.INFO)  # fmt: skip
        elif self.main:
            with self._kept():
                data = {} if run.data_info is None else {"data": run.data_info}  # how the data was made
                atomic_json(out / CONFIG, {"config": config.to_dict(), "version": __version__, **data})
                truncate_jsonl(out / METRICS, lambda r: False)  # a run killed before its first checkpoint: redone
        run.net = launch.wrap(run.model, run.sched)  # after loading: under torchrun, DDP over what still trains
        self.loss_sum = torch.zeros((), device=run.device)
        self.n_train = run.train_batches.examples_per_pass * run.world_size  # all ranks' examples (padded too)

    @property
    def done(self) -> bool:
        return self.epoch >= self.run.config.epochs

    @contextlib.contextmanager
    def _kept(self) -> Iterator[None]:
        """Around a write: a failed one also says which checkpoint is kept and what to do next."""
        try:
            yield
        except WriteError as exc:
            e, fix = self.epoch, "free some space" if exc.errno == errno.ENOSPC else "fix that"
            kept = (f"the checkpoint of epoch {e} is kept: {fix}, then run the same command with --resume"
                    if e else f"no checkpoint was written yet: {fix}, then run the command again")  # fmt: skip
            raise WriteError(exc.filename, exc, kept) from None

    def clock(self) -> StepClock:
        """The ETA's clock for the steps left (``progress.StepClock``)."""
        return StepClock(self.run.total_steps, self.run.sched.times, self.run.config.epochs)

    def epoch_steps(self) -> Iterator[None]:
        """The next epoch's steps, one per ``next()`` (untimed: the caller times them); then ``end_epoch``."""
        return self.run.epoch_steps(self.loss_sum)

    def train_epoch(self, display: Display | None = None, clock: StepClock | None = None) -> float:
        """The next epoch's steps, one after another; its training seconds (between device syncs)."""
        run, device = self.run, self.run.device
        on_step = None
        if display is not None and clock is not None:
            last, frozen = time.perf_counter(), run.sched.num_frozen

            def on_step() -> None:  # the ETA's measurements: each step's seconds and what it ran with
                nonlocal last, frozen
                now = time.perf_counter()
                clock.observe(frozen, now - last)
                last = now
                if run.sched.num_frozen != frozen:
                    frozen = run.sched.num_frozen
                    display.set_info(self.info())
                left = clock.remaining(run.sched.step_count, self.epoch)
                display.update(1, left)
                if not self.estimated and len(clock.recent) >= min(ESTIMATE_AFTER, run.total_steps):
                    self._announce(display, clock, left)

        sync(device)
        t = time.perf_counter()
        run.train_epoch(self.loss_sum, on_step)
        sync(device)
        return time.perf_counter() - t

    def _announce(self, display: Display, clock: StepClock, left: float) -> None:
        """The run's length, said once its first steps are measured (``left``: the seconds after them), for a run
        long enough that the line helps."""
        self.estimated, run = True, self.run
        steps = run.total_steps - run.sched.step_count + len(clock.recent)
        seconds = left + sum(clock.recent)
        if seconds >= ANNOUNCE:
            display.note(estimate_line(seconds, steps, run.total_steps, run.config.epochs, str(run.device)))

    def info(self) -> str:
        c, last = self.run.config, self.last.get("train_loss")
        loss = "?" if last is None else f"{last:.3f}"
        return f"epoch {min(self.epoch + 1, c.epochs)}/{c.epochs}, loss {loss}, frozen {self.run.sched.num_frozen}"

    def end_epoch(self, epoch_seconds: float, **extra: Any) -> dict[str, Any]:
        """The epoch just trained: its loss checked, the model evaluated, its line and checkpoint written (rank 0);
        ``extra`` goes into its line. Returns the line's record."""
        run, config, main, device = self.run, self.run.config, self.main, self.run.device
        launch_record = self.launch.end_epoch(self.loss_sum)  # sums the loss over ranks
        used = self.n_train - run.skipped_examples * run.world_size  # every rank skips the same steps
        train_loss = self.loss_sum.item() / used if used else math.nan
        run.check_finite(self.epoch + 1, train_loss)  # before anything of a diverged epoch is written
        self.skipped_total += run.skipped
        t = time.perf_counter()
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": run.sched.step_count, "train_loss": train_loss}
        for name, batches in run.eval_sets.items() if main else ():
            loss, acc = evaluate(run.model, batches, config.bf16)
            record.update({f"{name}_loss": loss, f"{name}_error": 1 - acc, f"{name}_accuracy": acc})
            if run.task == "lm":  # a language model's loss per byte, in bits: its metric
                record[f"{name}_bpb"] = loss / math.log(2)
        sync(device)
        record["eval_seconds"] = time.perf_counter() - t
        record.update(epoch_seconds=epoch_seconds, num_frozen=run.sched.num_frozen, lr=run.lr_summary())
        record.update(launch_record, skipped_batches=run.skipped, **extra)
        wall = self.wall_before + time.perf_counter() - self.started
        if main:
            with self._kept():
                append_jsonl(self.out / METRICS, record)  # before the checkpoint: a resume drops what it redoes
                extra_state = {"train_seconds": self.train_seconds + epoch_seconds, "wall_seconds": wall}
                extra_state.update(last=record, skipped_batches=self.skipped_total)
                atomic_torch_save(self.out / CHECKPOINT, run.state(self.epoch + 1, extra_state))
            self.records.append(record)
        self.epoch, self.train_seconds = self.epoch + 1, self.train_seconds + epoch_seconds
        self.last = record = self.launch.share(record)  # the others wait for rank 0's files and take its record
        log.info(
            "epoch %d/%d loss %.4f test error %.4f frozen %d/%d (%.1f s)",
            self.epoch, config.epochs, train_loss, record["test_error"], record["num_frozen"], len(run.layers),
            epoch_seconds,
        )  # fmt: skip
        return record

    def run_epochs(self, progress: bool) -> dict[str, Any]:
        """Every epoch left, one after another, then the summary; with ``progress``, a bar (on a terminal) and a
        line per epoch (on stderr)."""
        run = self.run
        display = Display(run.total_steps, run.sched.step_count) if progress and self.main else None
        clock = self.clock()
        try:
            if display is not None:
                display.set_info(self.info())
            while not self.done:
                record = self.end_epoch(self.train_epoch(display, clock))
                clock.eval_seconds = record["eval_seconds"]
                if display is not None:
                    display.note(epoch_line(record, run.config.epochs, len(run.layers)))
                    display.set_info(self.info())
        finally:
            if display is not None:
                display.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """The summary (every epoch done), written last on rank 0: its presence means the run finished."""
        run, config = self.run, self.run.config
        summary = {
            "config": config.to_dict(),
            "version": __version__,
            "epochs": config.epochs,
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "num_layers": len(run.layers),
            "num_frozen": run.sched.num_frozen,
            "skipped_batches": self.skipped_total,
            **{k: v for k, v in self.last.items() if k.startswith(("test_", "val_"))},
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_before + time.perf_counter() - self.started,
            "device": str(run.device),
            "world_size": run.world_size,
            "finished": True,
        }
        if run.data_info is not None:  # the data's provenance less its file lists (config.json has those)
            summary["data"] = {k: v for k, v in run.data_info.items() if not isinstance(v, list)}
        if self.main:
            with self._kept():
                atomic_json(self.out / SUMMARY, summary)
        _finished(run.model, self.launch)
        return self.launch.share(summary)
