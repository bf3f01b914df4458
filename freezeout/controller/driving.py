"""How FreezeOut is driven, seen from the optimizer's side: what a wrong drive looks like, said for what it is.

FreezeOut's clock counts its own ``step()`` calls, one per optimizer step, and its state dict carries the clock
across a resume. Two mistakes leave it behind the optimizer, and the LRs it finds changed at its next step would
otherwise be blamed on another scheduler:

- a resumed optimizer whose FreezeOut state was not loaded: the optimizer's state shows steps taken before this
  FreezeOut existed (Adam's ``step`` counts them; SGD's momentum only shows there were some), while FreezeOut
  starts again at step 0, warming up again and freezing nothing until its schedule says so;
- ``step()`` called less often than ``optimizer.step()`` (Lightning steps a scheduler once per epoch unless told
  ``"interval": "step"``): the schedule stretches over far more steps than ``total_steps`` says.

``StepWatch`` counts ``optimizer.step()`` calls with a step pre-hook (``Optimizer.register_step_pre_hook``, public
since torch 2.0) and reads the optimizer's state when FreezeOut is built (or its state loaded) and at the
optimizer's first step after. Only state that arrived in between counts as a resume: PyTorch's order builds
FreezeOut before loading the optimizer's state. State the optimizer held already when FreezeOut was built is a
deliberate start on a trained optimizer (a second ``Trainer.train()`` keeps its optimizer). Steps the optimizer
skips (an AMP scaler's overflow) are not counted, FreezeOut's clock moves on them: that only ever puts the optimizer
behind, which is not a mistake. Accelerate steps a scheduler once per process for each optimizer step
(``split_batches=False``): FreezeOut ahead, not behind, again no mistake.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["StepWatch", "innermost", "state_steps"]


def state_steps(optimizer: Any) -> int | None:
    """The most steps any parameter's optimizer state counts (``state["step"]``: Adam, AdamW, RMSprop, ...); 0 with no
    state, None when there is state but no count (SGD's momentum buffers)."""
    counts = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    if counts:
        return int(max(counts))
    return None if any(optimizer.state.values()) else 0


def innermost(optimizer: Any) -> Any:
    """The torch optimizer inside wrappers that hold it as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``, which
    runs no ``Optimizer.__init__`` and so has no hooks of its own; it steps the one inside on real steps only)."""
    while hasattr(getattr(optimizer, "optimizer", None), "param_groups"):
        optimizer = optimizer.optimizer
    return optimizer


class StepWatch:
    """Counts ``optimizer.step()`` calls beside FreezeOut's clock; ``close()`` takes its hook off the optimizer."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = innermost(optimizer)
        self.rearm()
        ref = weakref.ref(self)  # the optimizer must not keep a dropped FreezeOut's watch alive

        def hook(opt: Any, args: Any, kwargs: Any) -> None:
            watch = ref()
            if watch is not None:
                watch.count(opt)

        register = getattr(self.optimizer, "register_step_pre_hook", None)
        self._handle = register(hook) if register is not None else None

    def rearm(self) -> None:
        """Judge afresh from the optimizer's next step, against the state it holds now: FreezeOut was built, or its
        state loaded, on this optimizer as it is (a distributed checkpoint's loading may step the optimizer once)."""
        self.since = 0  # optimizer steps since FreezeOut's last step()
        self.built_on = state_steps(self.optimizer)  # a trained optimizer FreezeOut starts on deliberately
        self.earlier: int | None = 0  # what the optimizer's state showed at its first step since (state_steps)
        self.seen = False
        self.judged = False

    def count(self, optimizer: Any) -> None:
        if not self.seen:
            self.seen, self.earlier = True, state_steps(optimizer)
        self.since += 1

    def judge(self, clock: int) -> tuple[str | None, bool]:
        """Once, at FreezeOut's first step after the optimizer's first step here, ``clock`` its step count after that
        step: why FreezeOut is behind an optimizer whose state was loaded after FreezeOut was built (None when it is
        not), and whether such state was loaded at all (the LRs are then the checkpoint's, not those FreezeOut set
        last)."""
        if not self.seen or self.judged:
            return None, False
        self.judged = True
        earlier, built_on = self.earlier, self.built_on
        if earlier == built_on:  # nothing loaded into the optimizer since: a fresh run, or a deliberate start
            return None, False
        if earlier is None and clock <= 1:
            shows = "momentum from earlier steps"
        elif earlier is not None and earlier - (built_on or 0) >= clock:
            shows = f"{earlier} earlier steps"
        else:
            return None, True
        return (
            f"the optimizer's state shows {shows}, from before this FreezeOut was built, but FreezeOut is at step "
            f"{clock}: a resumed optimizer whose FreezeOut state was not loaded, so the schedule starts again (its "
            "warmup, nothing frozen). Save sched.state_dict() in the checkpoint and call sched.load_state_dict(...) "
            "after optimizer.load_state_dict(...); FreezeOut continues exactly where it was"
        ), True

    def too_rare(self) -> str | None:
        """Why ``step()`` is called less often than ``optimizer.step()``, or None; counts from here on afresh."""
        since, self.since = self.since, 0
        if since <= 1:
            return None
        return (
            f"optimizer.step() ran {since} times since the last FreezeOut.step(): FreezeOut's clock counts its "
            "step() calls and total_steps counts optimizer steps, so call step() once per optimizer step "
            "(Lightning: 'interval': 'step' in the lr_scheduler config), or set the clock with step_to(n)"
        )

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
