"""One training run's moving parts: model, optimizer, FreezeOut and batches built the same way at start and
resume, the training epoch (the hot path), its non-finite-loss guard, and evaluation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..accel.compile import compile_blocks
from ..cache import PrefixCache
from ..compat import foreach_copy_
from ..controller import FreezeOut
from ..groups import param_groups
from .config import FLOAT32_MAX, TrainConfig
from .data import Batches, Dataset, TextBatches, TextData, channel_stats
from .launch import Launch, SingleProcess
from .models import build_model

__all__ = ["COMPILE_KWARGS", "EVAL_BATCH", "NonFiniteLossError", "Run", "evaluate", "task_loss"]

EVAL_BATCH = 500  # evaluation keeps no activations for backward, so larger batches are cheap
COMPILE_KWARGS: dict[str, Any] = {}  # torch.compile options of --compile (tests pick a cheaper backend here)
# A scaled schedule multiplies the first layer's LR by 1 / t_1: beyond 100x (t_1 < 0.01: cubic t0 < 0.22) a
# divergence is blamed on t0 rather than on lr.
SCALE_SUSPECT = 0.01
ADAMW_BETA2 = 0.99  # nanoGPT's for its small character-level models (0.95 for GPT-2 sizes)
EVAL_WINDOWS = 128  # evaluation windows per batch: 128 x 64 bytes, as cheap to hold as EVAL_BATCH images


class NonFiniteLossError(ValueError):
    """A NaN/inf loss (or parameters) in "stop" mode: the run stopped before writing anything of that epoch."""


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def task_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``(batch, classes)`` against labels, or of a language model's ``(batch, length,
    vocabulary)`` against the next tokens ``(batch, length)``: per prediction, classes along the last dimension."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)


def evaluate(model: nn.Module, batches: Batches | TextBatches, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy (nats per prediction: per image, or per byte of a language model) and accuracy of
    ``model`` in eval mode over ``batches`` (one sync at the end)."""
    model.eval()
    loss = torch.zeros((), device=batches.device, dtype=torch.float64)
    correct = torch.zeros((), device=batches.device, dtype=torch.int64)
    n = 0
    with torch.inference_mode(), _autocast(batches.device, bf16):
        for x, y in batches:
            out = model(x).float().flatten(0, -2)
            loss += task_loss(out, y, "sum")
            correct += (out.argmax(1) == y.flatten()).sum()
            n += y.numel()
    return loss.item() / n, correct.item() / n


def _optimizer(model: nn.Module, layers: list, c: TrainConfig) -> torch.optim.Optimizer:
    """The paper's SGD with Nesterov momentum; or AdamW (``c.momentum`` its beta1), the optimizer a language model
    is trained with, with weight decay on matrices only (``param_groups``' decay / no-decay split)."""
    if c.optimizer == "adamw":
        groups = param_groups(model, layers, weight_decay=c.weight_decay)
        return torch.optim.AdamW(groups, lr=c.lr, betas=(c.momentum, ADAMW_BETA2))
    groups = param_groups(model, layers)
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)


def _image_batches(
    data: Dataset, c: TrainConfig, launch: Launch, generator: torch.Generator, device: torch.device
) -> tuple[Batches, dict[str, Batches]]:
    """Training batches (shuffled, augmented) and the evaluation sets of an image (or signal) data set."""
    mean, std = channel_stats(data.train_x)
    kw = {"device": device, "channels_last": c.channels_last}
    train = Batches(
        data.train_x, data.train_y, launch.batch_per_process(c.batch_size), mean, std, train=True,
        pad=data.pad if c.augment else 0, flip=data.flip and c.augment, generator=generator,
        shard=(launch.rank, launch.world_size), **kw,
    )  # fmt: skip
    evals = {"test": Batches(data.test_x, data.test_y, max(EVAL_BATCH, c.batch_size), mean, std, **kw)}
    if data.val_x is not None:
        evals["val"] = Batches(data.val_x, data.val_y, max(EVAL_BATCH, c.batch_size), mean, std, **kw)
    return train, evals


def _text_batches(
    data: TextData, c: TrainConfig, launch: Launch, generator: torch.Generator, device: torch.device
) -> tuple[TextBatches, dict[str, TextBatches]]:
    """Random training windows of the byte stream and the fixed windows of its held-out files."""
    train = TextBatches(
        data.train, data.context, launch.batch_per_process(c.batch_size), data.windows, train=True,
        generator=generator, device=device, shard=(launch.rank, launch.world_size),
    )  # fmt: skip
    test = TextBatches(data.test, data.context, max(c.batch_size, EVAL_WINDOWS), data.eval_windows, device=device)
    return train, {"test": test}


class Run:
    """Model, optimizer, FreezeOut and data batches of one config, built the same way at start and resume."""

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device, launch: Launch | None = None) -> None:
        launch = SingleProcess() if launch is None else launch
        self.config, self.device, self.launch = config, device, launch
        self.world_size = launch.world_size
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, config.depth, config.growth, data.num_classes, data.in_channels)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(device=device, memory_format=memory_format)
        self.layers = self.model.layers
        if config.compile:  # per layer: freezing recompiles each layer at most 3 times, never the whole model
            compile_blocks(self.layers, **COMPILE_KWARGS)
        self.opt = _optimizer(self.model, self.layers, config)
        c = config
        self.generator = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
        self.data_info, self.task = data.info, data.task  # how the data was made (the run's files record it)
        if isinstance(data, TextData):
            self.train_batches, self.eval_sets = _text_batches(data, config, launch, self.generator, device)
        else:
            self.train_batches, self.eval_sets = _image_batches(data, config, launch, self.generator, device)
        self.steps_per_epoch = len(self.train_batches)  # the last partial batch is a step too
        self.total_steps = c.epochs * self.steps_per_epoch
        self.sched = FreezeOut(
            self.opt, self.layers, self.total_steps, t0=c.t0, schedule=c.schedule, scale_lr=c.scale_lr,
            warmup_steps=c.warmup_steps, fuse=c.fuse,
        )  # fmt: skip
        if c.cache and self.world_size > 1:
            raise ValueError(f"cache trains in one process, this run has {self.world_size} (torchrun)")
        self.cache = PrefixCache(self.sched, data.num_train) if c.cache else None
        self.net: Any = self.model  # what the forward pass goes through: DDP under torchrun (Launch.wrap)
        top = max(self.sched.get_last_lr())  # LRs only fall from here
        if top > FLOAT32_MAX:  # torch's SGD could not even convert it: say so before anything is written
            raise ValueError(f"{self._first_lr()} overflows float32: raise --t0 or lower --lr")
        # "stop" mode: each step's loss stays on the device, looked at once per epoch (check_finite).
        self.losses = torch.zeros(self.steps_per_epoch, device=device)
        # "skip" mode: BatchNorm updates its running stats in the forward pass; a skipped batch restores them.
        self.buffers = list(self.model.buffers())
        self.backup = [b.clone() for b in self.buffers] if c.nonfinite == "skip" else []
        self.skipped = self.skipped_examples = 0  # this epoch's, so far (epoch_steps)

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
            "device": str(self.device),  # what "auto" was here: a resume compares the device it runs on
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

    def train_epoch(self, loss_sum: torch.Tensor, on_step: Callable[[], None] | None = None) -> tuple[int, int]:
        """One pass over the training data (``epoch_steps`` to the end); ``on_step()`` after each step.

        Returns the (batches, examples) this process skipped for a non-finite loss: only "skip" mode skips, at
        the price of two host syncs per step. A skipped batch is still a step of the FreezeOut schedule.
        """
        for _ in self.epoch_steps(loss_sum):
            if on_step is not None:
                on_step()
        return self.skipped, self.skipped_examples

    def epoch_steps(self, loss_sum: torch.Tensor) -> Iterator[None]:
        """The steps of one pass over the training data, one per ``next()``: the hot path, with no host sync
        inside in "stop" mode. A lockstep (``analysis.runs.lockstep``) interleaves two runs' steps this way.

        ``loss_sum`` and the counts ``skipped``/``skipped_examples`` are kept up to date after every step, so that
        they are right as soon as the last step has run (a lockstep never asks for the step after it).
        """
        model, opt, sched, net, after_step = self.model, self.opt, self.sched, self.net, self.launch.after_step
        skip = self.config.nonfinite == "skip"
        model.train()  # frozen layers stay in eval mode
        loss_sum.zero_()
        self.skipped = self.skipped_examples = 0
        for i, (x, y) in enumerate(self.train_batches):
            if skip:
                foreach_copy_(self.backup, self.buffers)
            cached = self.cache.batch(self.train_batches.indices.cpu()) if self.cache else contextlib.nullcontext()
            with _autocast(self.device, self.config.bf16), cached:
                loss = task_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            if skip:
                if not self._guarded_step(loss):
                    self.skipped, self.skipped_examples = self.skipped + 1, self.skipped_examples + y.shape[0]
                    loss = None
            else:
                loss.backward()
                opt.step()
                self.losses[i] = loss.detach()
            sched.step()
            after_step()
            if loss is not None:
                loss_sum.add_(loss.detach(), alpha=y.shape[0])
            yield

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
            foreach_copy_(self.buffers, self.backup)
        return ok

    def _first_lr(self) -> str:
        """The first layer's starting LR, the largest of a scaled schedule, and where it comes from."""
        c, t1 = self.config, self.sched.times[0]
        if not c.scale_lr:
            return f"the layers' LR lr = {c.lr:g}"
        what = "t0 cubed" if c.schedule == "cubic" else "t0"
        return f"the first layer's LR lr / t_1 = {c.lr:g} / {t1:g} = {c.lr / t1:g} (t_1 = {what})"

    def _advice(self) -> str:
        """What to change after a divergence: --lr, unless the scaling lr / t_1 made the first layer's LR huge."""
        if self.config.scale_lr and self.sched.times[0] < SCALE_SUSPECT:
            return f"{self._first_lr()} is the likely cause: raise --t0 (or use --no-scale-lr)"
        return "lower --lr"

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
                f"{i + 1} of {n}): training stopped, {kept}; {self._advice()}, or --nonfinite skip to drop such batches"
            )
        state = [*self.model.parameters(), *(b for b in self.buffers if b.is_floating_point())]
        if not torch.isfinite(torch.nn.utils.get_total_norm(state)):  # the last step's update, or BatchNorm's stats
            raise NonFiniteLossError(
                f"non-finite parameters or BatchNorm statistics after step {epoch * n} (epoch {epoch}, its last): "
                f"training stopped, {kept}; {self._advice()}"
            )

    def lr_summary(self) -> dict[str, float]:
        lrs = self.sched.get_last_lr()
        return {"min": min(lrs[:-1]), "max": max(lrs[:-1]), "head": lrs[-1]}
