"""The FreezeOut controller: holds config and the step count, and applies the schedule to an optimizer."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from .accel.fuse import fuse_layer
from .checks import check_int
from .freezing import freeze_layer
from .groups import group_owners
from .guard import Probe
from .layers import LayerLike, as_layers, check_layers
from .schedule import freeze_times, layer_lr, num_frozen_at, validate_schedule, validate_t0, validate_total_steps

__all__ = ["FreezeOut", "ScheduleWarning"]

log = logging.getLogger(__name__)


class ScheduleWarning(UserWarning):
    """Something other than FreezeOut changed the learning rates it sets, or the optimizer's groups."""


class FreezeOut:
    """Per-layer cosine annealing that freezes layers input side first (Brock et al., 2017): the LR schedule.

    ``layers``: the freezable layers in forward order, each an ``nn.Module`` or a list/tuple of modules and
    parameters that freeze together. Each of ``optimizer``'s groups must hold parameters of one layer, or only
    of the rest (``param_groups(model, layers)`` builds such groups; any number and order works). Each group
    follows its own layer's schedule from its own base LR, its LR when FreezeOut was built (``lr / t_i`` when
    scaled); the rest's groups follow the head's cosine (``t_i = 1``, never scaled).

    Call ``step()`` once per optimizer step, after ``optimizer.step()``. Right after construction the optimizer
    holds the LRs for ``t = 0``; after the ``s``-th ``step()`` those for ``t = s / total_steps``, and every layer
    with ``t_i <= t`` is frozen. ``warmup_steps=W`` multiplies every LR by ``min(1, s / W)``; freeze times do
    not change. The first training forward after construction and after each freeze is checked (see
    ``freezeout.guard``): layers out of forward order or tied to the rest raise ``ValueError``; a trainable
    tensor flowing into frozen layers is a ``FrozenInputWarning`` (``strict=True``: ``ValueError``).
    ``fuse`` (on by default) folds each frozen layer's BatchNorms into its convolutions for its training
    forwards (``freezeout.accel.fuse``); the model's parameters, buffers and state_dict are untouched.
    """

    def __init__(
        self,
        optimizer: Any,
        layers: Sequence[LayerLike],
        total_steps: int,
        t0: float = 0.8,
        schedule: str = "cubic",
        scale_lr: bool = True,
        *,
        warmup_steps: int = 0,
        strict: bool = False,
        fuse: bool = True,
    ) -> None:
        self.optimizer = optimizer
        self.layers = check_layers(layers)
        self._layers = as_layers(self.layers)
        self.total_steps = validate_total_steps(total_steps)
        self.t0 = validate_t0(t0)
        self.schedule = validate_schedule(schedule)
        self.scale_lr = bool(scale_lr)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.strict = bool(strict)
        if not isinstance(fuse, bool):
            raise ValueError(f"fuse must be True or False, got {fuse!r}")
        self.fuse = fuse
        self._owners = group_owners(optimizer, self._layers)
        self.times = freeze_times(len(self._layers), self.t0, self.schedule)
        # Like torch's LR schedulers: the LR found at first construction is the base, kept in the group
        # so a second FreezeOut on the same optimizer (or a resumed one) sees the same base.
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.num_frozen = 0
        self._warned: set[str] = set()
        self._probe = Probe(self._layers, self.strict)
        self._probe.arm(0)  # the first training forward: layer order and ties
        self._apply()

    @property
    def progress(self) -> float:
        return min(self.step_count / self.total_steps, 1.0)

    @property
    def group_layers(self) -> list[int]:
        """For each optimizer group, the index of its layer, or ``len(layers)`` for a group of the rest."""
        return list(self._owners)

    @property
    def last_epoch(self) -> int:
        """Steps taken, as torch's schedulers count them (they call every ``step()`` an epoch)."""
        return self.step_count

    def step(self, epoch: Any = None) -> None:
        """Advance one optimizer step: set the LRs for the new ``t`` and freeze the layers due."""
        if epoch is not None:
            raise ValueError(
                "FreezeOut.step() takes no argument: FreezeOut is the whole LR schedule and cannot run inside "
                "SequentialLR or ChainedScheduler; for a warmup use FreezeOut(..., warmup_steps=W)"
            )
        self._probe.finish()  # judge the forward pass just taken, if it was recorded
        self._adopt_new_groups()
        self._check_lrs()
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The LR of every optimizer group, like torch's schedulers."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def head_lr(self) -> float:
        """The rest's LR (the head's): what a logger should show as *the* learning rate."""
        n = len(self._layers)
        return next((g["lr"] for g, i in zip(self.optimizer.param_groups, self._owners) if i == n), 0.0)

    def _warmup(self) -> float:
        return 1.0 if self.warmup_steps == 0 else min(1.0, self.step_count / self.warmup_steps)

    def _apply(self) -> None:
        n, t, factor = len(self._layers), self.progress, self._warmup()
        for group, i, base in zip(self.optimizer.param_groups, self._owners, self.base_lrs):
            group["lr"] = factor * layer_lr(t, self.times[i] if i < n else 1.0, base, self.scale_lr and i < n)
        due = num_frozen_at(self.step_count, self.total_steps, self.times)
        froze = self.num_frozen < due
        while self.num_frozen < due:
            i = self.num_frozen
            groups = [g for g, owner in zip(self.optimizer.param_groups, self._owners) if owner == i]
            freeze_layer(self._layers[i], groups, self.optimizer)
            if self.fuse:
                for m in self._layers[i].modules:
                    fuse_layer(m)
            self.num_frozen += 1
            log.debug("froze layer %d at step %d (t=%.4f, t_i=%.4f)", i, self.step_count, self.progress, self.times[i])
        if froze:
            self._probe.arm(self.num_frozen)
        self._set = [g["lr"] for g in self.optimizer.param_groups]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, ScheduleWarning, stacklevel=3)

    def _adopt_new_groups(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) == len(self._owners):
            return
        new = group_owners(self.optimizer, self._layers)[len(self._owners) :]
        for group, i in zip(groups[len(self._owners) :], new):
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(float(group["initial_lr"]))
            self._owners.append(i)
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
                self._warn_once(
                    "lr",
                    f"the LR of optimizer param group {g} was changed outside FreezeOut (set {mine:g}, found "
                    f"{group['lr']:g}): another LR scheduler or a manual write. FreezeOut is the LR schedule (the "
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
        self._apply()
