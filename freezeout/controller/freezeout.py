"""The FreezeOut controller: holds config and the step count, and applies the schedule to an optimizer."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from .. import compat
from ..checks import Once, check_int
from ..freezing import FirstPass, FrozenPrefix, judge
from ..groups import check_optimizer, group_owners, split_groups
from ..layers import LayerLike, as_layers, check_layers
from ..options import FreezeOutOptions
from ..schedule import (
    freeze_times,
    layer_lr,
    num_frozen_at,
    progress,
    validate_total_steps,
)
from .driving import StepWatch
from .scheduler import ALONE, SchedulerSurface

__all__ = ["FreezeOut", "ScheduleWarning"]

log = logging.getLogger(__name__)
_DEFAULT = FreezeOutOptions()  # the signature's defaults are the options' own: one definition


def _option(name: str) -> property:
    """A read of ``FreezeOutOptions`` field ``name``: the options are stored once, in ``self.options``."""
    return property(lambda self: getattr(self.options, name), doc=f"``self.options.{name}``")


class ScheduleWarning(UserWarning):
    """Something other than FreezeOut changed the LRs it sets or the optimizer's groups, or it is driven wrong (a
    resume without its state, ``step()`` called less often than ``optimizer.step()``: ``controller.driving``)."""


class FreezeOut(SchedulerSurface):
    """FreezeOut (Brock et al., 2017) as the LR schedule of ``optimizer``: per-layer cosine annealing, each of
    ``layers`` (modules, or lists of modules and parameters, input side first) frozen at its time ``t_i``
    (docs/METHOD.md, "The schedule"; frozen as by hand: "What frozen means").

    Call ``step()`` once per optimizer step, after ``optimizer.step()`` (or ``step_to(n)``). Right after
    construction the optimizer holds the LRs for ``t = 0``; after the ``s``-th ``step()`` those for
    ``t = s / total_steps``, every layer with ``t_i <= t`` frozen. The optimizer is taken as built: a group
    spanning layers is split per layer, each keeping its options; a group's ``lr_scale`` multiplies its LR; the
    rest's groups follow the head's cosine (``t_i = 1``). The options are ``FreezeOutOptions``'. ``close()`` (or
    leaving a ``with`` block) gives the model back as handed in, with its trained weights. ``state_dict()`` /
    ``load_state_dict()`` resume exactly (load the model's and the optimizer's first).

    ``ValueError``: bad arguments, an optimizer that keeps one group (LBFGS), layers another open FreezeOut froze,
    layers out of forward order or tied to the rest (at the first ``step()``). To libraries it is a torch
    ``LRScheduler`` that composes with no other (``controller.scheduler``).
    """

    t0, schedule, scale_lr = _option("t0"), _option("schedule"), _option("scale_lr")
    warmup_steps, strict, fuse = _option("warmup_steps"), _option("strict"), _option("fuse")

    def __init__(
        self,
        optimizer: Any,
        layers: Sequence[LayerLike],
        total_steps: int,
        t0: float = _DEFAULT.t0,
        schedule: str = _DEFAULT.schedule,
        scale_lr: bool = _DEFAULT.scale_lr,
        *,
        warmup_steps: int = _DEFAULT.warmup_steps,
        strict: bool = _DEFAULT.strict,
        fuse: bool = _DEFAULT.fuse,
    ) -> None:
        self.optimizer = optimizer
        self.layers = check_layers(layers)
        self._layers = as_layers(self.layers)
        self.total_steps = validate_total_steps(total_steps)
        self.options = FreezeOutOptions(t0, schedule, scale_lr, warmup_steps=warmup_steps, strict=strict, fuse=fuse)
        check_optimizer(optimizer)
        # before anything is changed: refuses layers that another FreezeOut, still open, froze
        self._frozen = FrozenPrefix(self._layers, fuse=self.fuse)
        if split_groups(optimizer, self._layers):
            log.info(
                "optimizer groups spanning several layers split per layer: %d groups now", len(optimizer.param_groups)
            )
        self._owners = group_owners(optimizer, self._layers)
        # timm's convention: a group's LR is the schedule's times its lr_scale (layer-wise decay)
        self._scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
        self.times = freeze_times(len(self._layers), self.t0, self.schedule)
        self._keep_last = not self._rest_trains()
        if self._keep_last and self.times[0] < 1.0:
            self.times[-1] = 1.0
            log.info("no trainable parameter outside the layers: the last layer trains to the end")
        # Like torch's LR schedulers: the LR found at first construction is the base, kept in the group
        # so a second FreezeOut on the same optimizer (or a resumed one) sees the same base.
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.closed = False
        self._recompiles: tuple[int, int] | None = None  # dynamo's recompile limit raised (old, new), once
        self._watch = StepWatch(optimizer)
        self._said = Once()
        self._check: FirstPass | None = FirstPass(self._layers)  # the first training forward: order and ties
        self._apply()

    @classmethod
    def from_options(
        cls, optimizer: Any, layers: Sequence[LayerLike], total_steps: int, options: FreezeOutOptions
    ) -> FreezeOut:
        """``FreezeOut(optimizer, layers, total_steps, **options.as_dict())``."""
        if not isinstance(options, FreezeOutOptions):
            raise ValueError(f"options must be a freezeout.FreezeOutOptions, got {type(options).__name__}")
        return cls(optimizer, layers, total_steps, **options.as_dict())

    def _rest_trains(self) -> bool:
        n = len(self._layers)
        groups = [g for g, i in zip(self.optimizer.param_groups, self._owners) if i == n]
        return any(p.requires_grad for g in groups for p in g["params"])

    @property
    def progress(self) -> float:
        return progress(self.step_count, self.total_steps)

    @property
    def num_frozen(self) -> int:
        """How many layers are frozen (always the first ones); after ``close()``, how many the run had frozen."""
        return self._frozen.num_frozen if not self.closed else self._closed_at

    @property
    def frozen(self) -> list[list[str]]:
        """For each frozen layer, the names of the effects its freeze installed (``freezeout.freezing``)."""
        return [record.names for record in self._frozen.records]

    @property
    def group_layers(self) -> list[int]:
        """For each optimizer group, the index of its layer, or ``len(layers)`` for a group of the rest."""
        return list(self._owners)

    def step(self, epoch: Any = None) -> None:
        """Advance one optimizer step: set the LRs for the new ``t`` and freeze the layers due."""
        if epoch is not None:
            raise ValueError(f"FreezeOut.step() takes no argument: {ALONE}")
        self._advance(self.step_count + 1, counted=True)

    def step_to(self, n: int) -> None:
        """The schedule at optimizer step ``n``, an explicit clock (timm's ``step_update(num_updates)``): after it the
        optimizer holds the LRs for ``t = n / total_steps`` and every layer due by then is frozen, as after ``n``
        calls of ``step()``. ``n`` may skip ahead; going back past a freeze is a ``ValueError``."""
        n = check_int("n", n, 0)
        if self.frozen_at(n) < self.num_frozen:
            raise ValueError(
                f"step_to({n}): {self.num_frozen} layers are frozen at step {self.step_count}, only "
                f"{self.frozen_at(n)} at step {n}: the clock cannot go back past a freeze"
            )
        self._advance(n)

    def _advance(self, n: int, counted: bool = False) -> None:
        if self.closed:
            raise RuntimeError("FreezeOut.step() after close(): build a fresh FreezeOut to train with it again")
        if self._check is not None:
            self._check.finish()
            self._frozen.learn_model(self._check.root)
        judge(self._frozen.take_reports(), self.strict)
        self._adopt_new_groups()
        rare = self._watch.too_rare()  # counts afresh from here on, also after step_to (an explicit clock)
        if rare and counted:
            self._warn_once("rare", rare)
        missing, resumed = self._watch.judge(n)
        if missing:
            self._warn_once("missing", missing)
        if not resumed:  # a resumed optimizer holds the checkpoint's LRs: said above if wrong, not blamed elsewhere
            self._check_lrs()
        self.step_count = n
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The LR of every optimizer group, like torch's schedulers."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def head_lr(self, step: int | None = None) -> float:
        """What a logger should show as *the* learning rate: the rest's (the head's), or with no group of the rest
        the LR of the last layer still training. Now, or at optimizer step ``step``."""
        n = len(self._layers)
        lrs = self.get_last_lr() if step is None else self.lrs_at(step)
        frozen = self.num_frozen if step is None else self.frozen_at(step)
        rest = [lr for lr, i in zip(lrs, self._owners) if i == n]
        if rest:
            return rest[0]
        training = [(i, lr) for lr, i in zip(lrs, self._owners) if i >= frozen]
        return max(training, key=lambda x: x[0])[1] if training else 0.0

    def close(self) -> None:
        """Remove everything FreezeOut put on the model (hooks, folds, cuts, inference mode), newest first, and give
        each frozen parameter back its ``requires_grad``: the model is as it was handed in, with its trained
        weights; ``train()`` trains every module again. The optimizer keeps its groups and LRs. ``step()`` refuses
        from then on. Idempotent."""
        if self._check is not None:
            self._check.close()
            self._check = None
        if not self.closed:
            self._closed_at = self._frozen.num_frozen
        self._frozen.close()
        self._watch.close()
        self.closed = True

    def __enter__(self) -> FreezeOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lrs_at(self, step: int) -> list[float]:
        """The LR of every optimizer group at optimizer step ``step`` (what ``step()`` sets after that many steps)."""
        n, t = len(self._layers), progress(step, self.total_steps)
        factor = 1.0 if self.warmup_steps == 0 else min(1.0, max(step, 0) / self.warmup_steps)
        return [
            scale * factor * layer_lr(t, self.times[i] if i < n else 1.0, base, self.scale_lr and i < n)
            for i, base, scale in zip(self._owners, self.base_lrs, self._scales)
        ]

    def frozen_at(self, step: int) -> int:
        """How many layers are frozen at optimizer step ``step``."""
        due = num_frozen_at(step, self.total_steps, self.times)
        return min(due, len(self._layers) - 1) if self._keep_last else due

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs_at(self.step_count)):
            group["lr"] = lr
        due = self.frozen_at(self.step_count)
        while self.num_frozen < due:
            i = self.num_frozen
            groups = [g for g, owner in zip(self.optimizer.param_groups, self._owners) if owner == i]
            self._allow_recompiles()
            record = self._frozen.freeze_next(groups, self.optimizer)
            if self._check is not None:
                self._check.release(i)
            log.debug("froze layer %d at step %d (t=%.4f, t_i=%.4f): %s", i, self.step_count, self.progress,
                      self.times[i], ", ".join(record.names))  # fmt: skip
        self._set = [g["lr"] for g in self.optimizer.param_groups]
        self._last_lr = list(self._set)

    def _warn_once(self, key: str, message: str) -> None:
        if self._said.first(key):
            warnings.warn(message, ScheduleWarning, stacklevel=5)

    def _adopt_new_groups(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) == len(self._owners):
            return
        new = group_owners(self.optimizer, self._layers)[len(self._owners) :]
        for group, i in zip(groups[len(self._owners) :], new):
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(float(group["initial_lr"]))
            self._owners.append(i)
            self._scales.append(float(group.get("lr_scale", 1.0)))
            self._set.append(group["lr"])
            what = f"layers[{i}]" if i < len(self._layers) else "the rest (the head)"
            self._warn_once(
                f"group{len(self._owners) - 1}",
                f"optimizer param group {len(self._owners) - 1} was added after FreezeOut was built: it follows the "
                f"schedule of {what} from its LR {group['initial_lr']:g} now",
            )

    def _check_lrs(self) -> None:
        for g, (group, mine) in enumerate(zip(self.optimizer.param_groups, self._set)):
            if group["lr"] != mine:
                found = f"the LR of optimizer param group {g} was changed outside FreezeOut (set {mine:g}, found "
                if compat.lr_scheduler_attached(self.optimizer):  # a torch scheduler: it would fight every step
                    raise ValueError(f"{found}{group['lr']:g}) by a torch LR scheduler on this optimizer. {ALONE}")
                self._warn_once(
                    "lr",
                    f"{found}{group['lr']:g}): another LR scheduler or a manual write, or the optimizer's state_dict "
                    "loaded without FreezeOut's (load FreezeOut's after it). FreezeOut is the LR schedule (the "
                    "paper's per-layer cosine; warmup_steps=W adds a warmup) and sets every LR at each step(): "
                    "drop the other scheduler",
                )
                return

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "t0": self.t0,
            "schedule": self.schedule,
            "scale_lr": self.scale_lr,
            "warmup_steps": self.warmup_steps,
            "num_layers": len(self._layers),
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; load the model's and the optimizer's state dicts first."""
        mine = self.state_dict()
        keys = ("total_steps", "t0", "schedule", "scale_lr", "num_layers")
        missing = [k for k in (*keys, "step_count") if k not in state]
        if missing:
            raise ValueError(f"state is not a FreezeOut state_dict: missing {missing}")
        saved = {**state, "warmup_steps": state.get("warmup_steps", 0)}  # saved before warmup existed: none
        differ = [f"{k}: saved {saved[k]!r}, now {mine[k]!r}" for k in (*keys, "warmup_steps") if saved[k] != mine[k]]
        if differ:
            raise ValueError("FreezeOut state_dict was saved with a different configuration: " + "; ".join(differ))
        step = check_int("step_count", state["step_count"], 0)
        if step < self.step_count and self.num_frozen:
            raise ValueError("cannot go back to an earlier step once layers are frozen: build a fresh FreezeOut")
        base_lrs = [float(x) for x in state.get("base_lrs", self.base_lrs)]
        if len(base_lrs) != len(self.base_lrs):
            raise ValueError(
                f"FreezeOut state_dict has {len(base_lrs)} optimizer groups, this optimizer {len(self.base_lrs)}: "
                "build the optimizer exactly as when the state was saved"
            )
        self.base_lrs = base_lrs
        self.step_count = step
        self._watch.rearm()
        self._apply()
