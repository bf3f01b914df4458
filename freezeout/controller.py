"""The FreezeOut controller: holds config and the step count, and applies the schedule to an optimizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from .accel.fuse import fuse_layer
from .checks import check_int
from .freezing import freeze_layer
from .groups import check_layers, check_optimizer_layout
from .schedule import (
    freeze_times,
    learning_rates,
    num_frozen_at,
    validate_schedule,
    validate_t0,
    validate_total_steps,
)

__all__ = ["FreezeOut"]

log = logging.getLogger(__name__)


class FreezeOut:
    """Per-layer cosine annealing that freezes layers input side first (Brock et al., 2017).

    The optimizer must come from ``param_groups(model, layers)``. Call ``step()`` once per optimizer step,
    after ``optimizer.step()``. Right after construction the optimizer holds the LRs for ``t = 0``; after
    the ``s``-th ``step()`` those for ``t = s / total_steps``, and every layer with ``t_i <= t`` is frozen.
    Each group's LR at construction is its base LR (``lr / t_i`` when scaled), so per-group LRs work.
    ``fuse`` (on by default) folds each frozen layer's BatchNorms into its convolutions for its training
    forwards (``freezeout.accel.fuse``); the model's parameters, buffers and state_dict are untouched.
    """

    def __init__(
        self,
        optimizer: Any,
        layers: Sequence[nn.Module],
        total_steps: int,
        t0: float = 0.8,
        schedule: str = "cubic",
        scale_lr: bool = True,
        fuse: bool = True,
    ) -> None:
        self.optimizer = optimizer
        self.layers = check_layers(layers)
        self.total_steps = validate_total_steps(total_steps)
        self.t0 = validate_t0(t0)
        self.schedule = validate_schedule(schedule)
        self.scale_lr = bool(scale_lr)
        if not isinstance(fuse, bool):
            raise ValueError(f"fuse must be True or False, got {fuse!r}")
        self.fuse = fuse
        check_optimizer_layout(optimizer, self.layers)
        self.times = freeze_times(len(self.layers), self.t0, self.schedule)
        # Like torch's LR schedulers: the LR found at first construction is the base, kept in the group
        # so a second FreezeOut on the same optimizer (or a resumed one) sees the same base.
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.num_frozen = 0
        self._apply()

    @property
    def progress(self) -> float:
        return min(self.step_count / self.total_steps, 1.0)

    def step(self) -> None:
        """Advance one optimizer step: set the LRs for the new ``t`` and freeze the layers due."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The LR of every group (layers, then the rest), like torch's schedulers."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        lrs = learning_rates(self.step_count, self.total_steps, self.times, self.base_lrs, self.scale_lr)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        due = num_frozen_at(self.step_count, self.total_steps, self.times)
        while self.num_frozen < due:
            i = self.num_frozen
            freeze_layer(self.layers[i], self.optimizer.param_groups[i], self.optimizer)
            if self.fuse:
                fuse_layer(self.layers[i])
            self.num_frozen += 1
            log.debug("froze layer %d at step %d (t=%.4f, t_i=%.4f)", i, self.step_count, self.progress, self.times[i])

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "t0": self.t0,
            "schedule": self.schedule,
            "scale_lr": self.scale_lr,
            "num_layers": len(self.layers),
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; load the model's and the optimizer's state dicts first."""
        mine = self.state_dict()
        keys = ("total_steps", "t0", "schedule", "scale_lr", "num_layers")
        missing = [k for k in (*keys, "step_count") if k not in state]
        if missing:
            raise ValueError(f"state is not a FreezeOut state_dict: missing {missing}")
        differ = [f"{k}: saved {state[k]!r}, now {mine[k]!r}" for k in keys if state[k] != mine[k]]
        if differ:
            raise ValueError("FreezeOut state_dict was saved with a different configuration: " + "; ".join(differ))
        step = check_int("step_count", state["step_count"], 0)
        if step < self.step_count and self.num_frozen:
            raise ValueError("cannot go back to an earlier step once layers are frozen: build a fresh FreezeOut")
        self.base_lrs = [float(x) for x in state.get("base_lrs", self.base_lrs)]
        self.step_count = step
        self._apply()
