"""FreezeOut's face to the ecosystem: torch's LR-scheduler API, and what ``torch.compile`` needs of it.

FreezeOut subclasses ``torch.optim.lr_scheduler.LRScheduler`` so that code written for torch's schedulers takes it
as one: ``accelerate.Accelerator.prepare`` wraps it (stepping it once per optimizer step under gradient
accumulation) and ``save_state`` checkpoints it; Lightning steps it as the ``lr_scheduler`` of
``configure_optimizers`` (``"interval": "step"``); ``isinstance``, ``last_epoch``, ``get_last_lr()``,
``get_lr()``, ``state_dict()`` behave as torch's do. It does not run ``LRScheduler.__init__``: that wraps the
optimizer's ``step`` (the mark ``freezeout.compat.lr_scheduler_attached`` reads, which must stay another
scheduler's) and steps once.

It replaces a scheduler and never composes with one (``ALONE``): ``SequentialLR`` undoes its schedulers' first
step by writing ``last_epoch``, which FreezeOut refuses with that message; inside ``ChainedScheduler`` or beside a
``CosineAnnealingLR``, the other scheduler changes the LRs FreezeOut set, which its next ``step()`` refuses.

A whole-model ``torch.compile`` recompiles at each freeze (dynamo guards on ``requires_grad``) and gives up after
``recompile_limit`` (8) graphs per code object, running the model eagerly from then on. So at its first freeze
under a loaded dynamo FreezeOut raises that limit by two per freeze to come (a training and an evaluation graph
per frozen state), said once in a log line. Each freeze still costs a full recompile: ``freezeout.compile_blocks``
compiles per layer instead (docs/COMPILE.md).
"""

from __future__ import annotations

import logging
from typing import Any

from torch.optim.lr_scheduler import LRScheduler

from .. import compat

__all__ = ["ALONE", "SchedulerSurface"]

log = logging.getLogger(__name__)

ALONE = (
    "FreezeOut is the whole LR schedule: it cannot run inside SequentialLR or ChainedScheduler, nor beside another LR "
    "scheduler on its optimizer; for a warmup use FreezeOut(..., warmup_steps=W), to set its clock step_to(n)"
)


class SchedulerSurface(LRScheduler):
    """The ``LRScheduler`` half of ``FreezeOut`` (see the module doc); FreezeOut provides the attributes read here."""

    step_count: int
    total_steps: int
    _recompiles: tuple[int, int] | None

    @property
    def last_epoch(self) -> int:
        """Steps taken, as torch's schedulers count them (they call every ``step()`` an epoch); read-only."""
        return self.step_count

    @last_epoch.setter
    def last_epoch(self, value: Any) -> None:
        raise ValueError(f"FreezeOut.last_epoch is its step count and cannot be set: {ALONE}")

    @property
    def _step_count(self) -> int:
        # torch's count of step() calls, the initial one included. Accelerate stops stepping a scheduler that has a
        # total_steps once this passes it, and adds 1 for every micro-batch it accumulates: not an optimizer step,
        # so that write is ignored (FreezeOut's clock is step_count)
        return self.step_count + 1

    @_step_count.setter
    def _step_count(self, value: Any) -> None:
        pass

    def get_lr(self) -> list[float]:
        """The LR of every optimizer group at the current step, as FreezeOut sets them."""
        return self.lrs_at(self.step_count)

    def first_layer_lr(self, step: int | None = None) -> float | None:
        """The LR of the first layer still training (the earliest not frozen; its first group's), now or at optimizer
        step ``step``. Scaled, early layers run at up to ``1 / t_i`` times the head's. None once all are frozen."""
        lrs = self.get_last_lr() if step is None else self.lrs_at(step)
        frozen = self.num_frozen if step is None else self.frozen_at(step)
        training = [lr for lr, i in zip(lrs, self.group_layers) if i == frozen and i < len(self.layers)]
        return training[0] if training else None

    def _allow_recompiles(self) -> None:
        if self._recompiles is not None:
            return
        freezes = self.frozen_at(self.total_steps) - self.num_frozen
        self._recompiles = compat.raise_recompile_limit(2 * freezes)
        if self._recompiles is not None:
            log.info(
                "torch.compile is in use: raised torch._dynamo's recompile_limit from %d to %d (two per freeze to "
                "come), so a compiled model recompiles at each freeze instead of running eagerly after 8 graphs",
                *self._recompiles,
            )
