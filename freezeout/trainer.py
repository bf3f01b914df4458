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
import torch.nn.functional as F
from torch import nn

from . import __version__, distributed
from .compiled import compile_blocks
from .config import FLOAT32_MAX, TrainConfig
from .controller import FreezeOut
from .data import Batches, Dataset, channel_stats, load_dataset
from .distributed import Distributed, Launch
from .groups import param_groups
from .models import build_model
from .runfiles import (
    append_jsonl,
    atomic_json,
    atomic_torch_save,
    check_writable,
    read_json,
    remove_stale_temps,
    truncate_jsonl,
)

__all__ = ["EVAL_BATCH", "NonFiniteLossError", "ResumeError", "evaluate", "resolve_device", "train"]

log = logging.getLogger(__name__)

EVAL_BATCH = 500  # evaluation keeps no activations for backward, so larger batches are cheap
COMPILE_KWARGS: dict[str, Any] = {}  # torch.compile options of --compile (tests pick a cheaper backend here)
CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"


class NonFiniteLossError(ValueError):
    """A NaN/inf loss (or parameters) in "stop" mode: the run stopped before writing anything of that epoch."""


class ResumeError(ValueError):
    """The run in out_dir cannot be resumed: no checkpoint, a torn one, or one of another config."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's message lists every backend it knows; ours names what this library runs on
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them only once they are done
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def evaluate(model: nn.Module, batches: Batches, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``batches`` (one sync at the end)."""
    model.eval()
    loss = torch.zeros((), device=batches.device, dtype=torch.float64)
    correct = torch.zeros((), device=batches.device, dtype=torch.int64)
    with torch.inference_mode(), _autocast(batches.device, bf16):
        for x, y in batches:
            out = model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    n = len(batches.y)
    return loss.item() / n, correct.item() / n


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise ResumeError(f"cannot resume: no checkpoint in {path.parent} (nothing was trained there yet)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(ckpt["config"])
    except Exception as exc:  # a torn or foreign file: say which, in one line
        raise ResumeError(f"cannot resume from {path}: not a readable checkpoint ({type(exc).__name__})") from None
    _same_config(saved, config, path)
    return ckpt


def _finished_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = read_json(path)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and summary.get("finished") is True else None


def _same_config(saved: TrainConfig, config: TrainConfig, where: Path) -> None:
    differ = saved.differences(config)
    if differ:
        raise ResumeError(f"cannot resume {where}: it was run with a different config ({'; '.join(differ)})")


class _Run:
    """Model, optimizer, FreezeOut and data batches of one config, built the same way at start and resume."""

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device, launch: Launch | None = None) -> None:
        self.config, self.device = config, device
        self.world_size = 1 if launch is None else launch.world_size
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, config.depth, config.growth, data.num_classes, data.in_channels)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(device=device, memory_format=memory_format)
        self.layers = self.model.layers
        if config.compile:  # per layer: freezing recompiles each layer at most 3 times, never the whole model
            compile_blocks(self.layers, **COMPILE_KWARGS)
        groups = param_groups(self.model, self.layers)
        c = config
        self.opt = torch.optim.SGD(
            groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay
        )
        self.generator = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
        mean, std = channel_stats(data.train_x)
        kw = {"device": device, "channels_last": config.channels_last}
        shard = {} if launch is None else {"shard": (launch.rank, launch.world_size)}
        self.train_batches = Batches(
            data.train_x, data.train_y, c.batch_size // self.world_size, mean, std, train=True, pad=data.pad,
            flip=data.flip, generator=self.generator, **kw, **shard,
        )  # fmt: skip
        self.eval_sets = {"test": Batches(data.test_x, data.test_y, max(EVAL_BATCH, c.batch_size), mean, std, **kw)}
        if data.val_x is not None:
            self.eval_sets["val"] = Batches(data.val_x, data.val_y, max(EVAL_BATCH, c.batch_size), mean, std, **kw)
        self.steps_per_epoch = len(self.train_batches)  # the last partial batch is a step too
        self.total_steps = c.epochs * self.steps_per_epoch
        self.sched = FreezeOut(
            self.opt, self.layers, self.total_steps, t0=c.t0, schedule=c.schedule, scale_lr=c.scale_lr
        )
        self.net: Any = self.model  # what the forward pass goes through: DDP under torchrun
        self.on_step: Any = None  # called after every step (under torchrun: rebuilds DDP when a layer froze)
        top = max(self.sched.get_last_lr())  # LRs only fall from here
        if top > FLOAT32_MAX:  # torch's SGD could not even convert it: say so before anything is written
            raise ValueError(f"the largest layer LR, lr / t_1 = {top:g}, overflows float32: lower --lr or raise --t0")
        # "stop" mode: each step's loss stays on the device, looked at once per epoch (check_finite).
        self.losses = torch.zeros(self.steps_per_epoch, device=device)
        # "skip" mode: BatchNorm updates its running stats in the forward pass; a skipped batch restores them.
        self.buffers = list(self.model.buffers())
        self.backup = [b.clone() for b in self.buffers] if c.nonfinite == "skip" else []

    def state(self, epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "freezeout": self.sched.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "step": self.sched.step_count,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
            **extra,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        # PyTorch's usual order: everything built as at the start, then model, optimizer, FreezeOut.
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["freezeout"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.generator.set_state(ckpt["rng"]["generator"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def train_epoch(self, loss_sum: torch.Tensor, bar: Any, label: str = "") -> tuple[int, int]:
        """One pass over the training data: the hot path, with no host sync inside in "stop" mode.

        Returns the (batches, examples) this process skipped for a non-finite loss: only "skip" mode skips, at
        the price of two host syncs per step. A skipped batch is still a step of the FreezeOut schedule.
        """
        model, opt, sched, net, on_step = self.model, self.opt, self.sched, self.net, self.on_step
        skip = self.config.nonfinite == "skip"
        model.train()  # frozen layers stay in eval mode
        loss_sum.zero_()
        frozen = sched.num_frozen
        skipped = skipped_examples = 0
        for i, (x, y) in enumerate(self.train_batches):
            if skip:
                torch._foreach_copy_(self.backup, self.buffers)
            with _autocast(self.device, self.config.bf16):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            if skip:
                if not self._guarded_step(loss):
                    skipped, skipped_examples = skipped + 1, skipped_examples + y.shape[0]
                    loss = None
            else:
                loss.backward()
                opt.step()
                self.losses[i] = loss.detach()
            sched.step()
            if on_step is not None:
                on_step()
            if loss is not None:
                loss_sum.add_(loss.detach(), alpha=y.shape[0])
            if bar is not None:
                bar.update()
                if sched.num_frozen != frozen:
                    frozen = sched.num_frozen
                    bar.set_postfix_str(f"{label} frozen={frozen}", refresh=False)
        return skipped, skipped_examples

    def _guarded_step(self, loss: torch.Tensor) -> bool:
        """ "skip" mode: update only if the loss and the gradients are finite; otherwise leave no trace."""
        finite = torch.isfinite(loss).to(torch.int32)
        if self.world_size > 1:  # every rank must take one branch, or DDP's backward waits forever for the others
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        ok = bool(finite)  # gradients are all-reduced, hence equal on every rank: their check below agrees too
        if ok:
            loss.backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            # a norm that overflows float32 (gradients ~1e19) counts as non-finite too: such a step is no better
            ok = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if ok:
            self.opt.step()
        else:
            self.opt.zero_grad(set_to_none=True)
            torch._foreach_copy_(self.buffers, self.backup)
        return ok

    def check_finite(self, epoch: int, train_loss: float) -> None:
        """Raise ``NonFiniteLossError`` naming the first step of ``epoch`` with a NaN/inf loss (one sync)."""
        n, skip = self.steps_per_epoch, self.config.nonfinite == "skip"
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was written"
        if not math.isfinite(train_loss):
            if skip:
                raise NonFiniteLossError(f"every batch of epoch {epoch} had a non-finite loss; {kept}")
            bad = (~torch.isfinite(self.losses)).nonzero()
            i = int(bad[0]) if len(bad) else n - 1
            raise NonFiniteLossError(
                f"non-finite loss ({float(self.losses[i])}) at step {(epoch - 1) * n + i + 1} (epoch {epoch}, batch "
                f"{i + 1} of {n}): training stopped, {kept}; lower --lr, or --nonfinite skip to drop such batches"
            )
        state = [*self.model.parameters(), *(b for b in self.buffers if b.is_floating_point())]
        if not torch.isfinite(torch.nn.utils.get_total_norm(state)):  # the last step's update, or BatchNorm's stats
            raise NonFiniteLossError(
                f"non-finite parameters or BatchNorm statistics after step {epoch * n} (epoch {epoch}, its last): "
                f"training stopped, {kept}; lower --lr"
            )

    def lr_summary(self) -> dict[str, float]:
        lrs = self.sched.get_last_lr()
        return {"min": min(lrs[:-1]), "max": max(lrs[:-1]), "head": lrs[-1]}


def _progress_bar(run: _Run, epoch: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # the cli extra; the library itself needs only torch

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

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; see ``freezeout.distributed``: the
    batch size is global, rank 0 evaluates and writes the files, every rank returns the same summary.
    """
    launch = distributed.launch_from_env()
    dist_ = None if launch is None else Distributed(launch)
    ok = False
    try:
        summary = _train(config.validate(), Path(out_dir), resume, progress, dist_)
        ok = True
        return summary
    finally:
        if dist_ is not None:
            dist_.close(ok)


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, dist_: Distributed | None) -> dict:
    started = time.perf_counter()
    launch = None if dist_ is None else dist_.launch
    main = launch is None or launch.is_main  # the process that evaluates and writes the files
    if launch is not None:
        distributed.check_batch_size(launch, config.batch_size)
    if resume and (out / SUMMARY).is_file():
        summary = _finished_summary(out / SUMMARY)
        if summary is not None:
            _same_config(TrainConfig.from_dict(summary.get("config", {})), config, out)
            distributed.check_world_size(summary, launch, out)
            log.info("%s already finished; nothing to resume", out)
            return summary
        log.warning("%s is torn or unfinished (not written by this trainer): resuming", out / SUMMARY)
    if resume:
        ckpt = _load_checkpoint(out / CHECKPOINT, config)
        distributed.check_world_size(ckpt, launch, out)
    elif (out / CHECKPOINT).exists() or (out / SUMMARY).exists():
        raise ValueError(f"out_dir {out} already holds a run: resume it or choose another out_dir")
    device = resolve_device(config.device)
    if launch is not None:
        device = distributed.device_for(launch, config.device, device)
    if config.bf16 and device.type != "cuda":
        raise ValueError("bf16 autocast needs a CUDA device (device is cpu)")
    data = load_dataset(config.dataset, config.data_dir, config.val_split)
    if dist_ is not None:
        dist_.start(device)
    run = _Run(config, data, device, launch)
    if dist_ is None:
        check_writable(out)
    else:
        dist_.agree(distributed.error_of(check_writable, out) if main else None)
    for stale in remove_stale_temps(out) if main else ():
        log.info("removed %s, left by a write that was killed", stale)

    epoch, train_seconds, wall_before, last, skipped_total = 0, 0.0, 0.0, {}, 0
    if resume:
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
    if dist_ is not None:  # after loading: DDP over what is still trainable
        dist_.wrap(run.model, run.sched)
        run.net, run.on_step = dist_, dist_.after_step

    bar = _progress_bar(run, epoch, progress and main)
    loss_sum = torch.zeros((), device=device)
    n_train = run.train_batches.examples_per_pass * run.world_size  # all ranks' examples (padded ones too)
    label = f"epoch={epoch + 1}/{config.epochs} loss=?"
    try:
        while epoch < config.epochs:
            _sync(device)
            t = time.perf_counter()
            skipped, skipped_examples = run.train_epoch(loss_sum, bar, label)
            _sync(device)
            epoch_seconds = time.perf_counter() - t
            ddp_record = {} if dist_ is None else dist_.end_epoch(loss_sum)  # sums the loss over ranks
            used = n_train - skipped_examples * run.world_size  # every rank skips the same steps
            train_loss = loss_sum.item() / used if used else math.nan
            run.check_finite(epoch + 1, train_loss)  # before anything of a diverged epoch is written
            skipped_total += skipped
            t = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "step": run.sched.step_count, "train_loss": train_loss}
            for name, batches in run.eval_sets.items() if main else ():
                loss, acc = evaluate(run.model, batches, config.bf16)
                record.update({f"{name}_loss": loss, f"{name}_error": 1 - acc, f"{name}_accuracy": acc})
            _sync(device)
            record["eval_seconds"] = time.perf_counter() - t
            record.update(epoch_seconds=epoch_seconds, num_frozen=run.sched.num_frozen, lr=run.lr_summary())
            record.update(ddp_record)
            record["skipped_batches"] = skipped
            epoch, train_seconds, last = epoch + 1, train_seconds + epoch_seconds, record
            wall = wall_before + time.perf_counter() - started
            if main:
                append_jsonl(out / METRICS, record)  # before the checkpoint: a resume truncates what it redoes
                extra = {"train_seconds": train_seconds, "wall_seconds": wall, "last": record}
                extra["skipped_batches"] = skipped_total
                atomic_torch_save(out / CHECKPOINT, run.state(epoch, extra))
            if dist_ is not None:  # the others wait for rank 0's files and take its record
                last = record = dist_.share(record)
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
    if dist_ is not None:
        dist_.dump_state()
        summary = dist_.share(summary)
    return summary
