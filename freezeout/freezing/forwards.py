"""One owner of a module's instance ``forward``: folds, the cache's stand-in and ``compile_blocks`` all put theirs
on a module through here, stacked, and take them off in any order.

Each is an ``OwnedForward`` that runs in place of the forward below it and calls ``below(...)`` for it: the
instance ``forward`` that was there when it was pushed, or the class's own. Taking one off relinks the one above
it to the one below; if a forward FreezeOut does not own sits on top (the user patched the module after us), ours
cannot be unlinked from under it and becomes a pass-through instead. ``strip_forwards`` takes every one of ours
off a module (a deep copy's, which no effect holds a handle to).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .effect import OwnedHook

__all__ = ["OwnedForward", "forwards_of", "pop_forward", "push_forward", "strip_forwards"]

log = logging.getLogger(__name__)


class OwnedForward(OwnedHook):
    """An instance ``forward`` FreezeOut put on ``module``; subclasses define ``run``."""

    #: taken off by ``remove_effects`` (a copy of a frozen model trains again); ``compile_blocks``' is the user's own
    part_of_freeze = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.previous: Any = None  # the instance forward below this one, or None: the class's own
        self.inert = False  # taken off while a foreign forward sat on top: only passes calls down

    def below(self, *args: Any, **kwargs: Any) -> Any:
        """The forward this one stands in front of."""
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.inert:
            return self.below(*args, **kwargs)
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def push_forward(forward: OwnedForward) -> OwnedForward:
    """Put ``forward`` on top of its module's forwards."""
    module = forward.module
    forward.previous = module.__dict__.get("forward")
    module.__dict__["forward"] = forward
    return forward


def forwards_of(module: nn.Module) -> list[OwnedForward]:
    """FreezeOut's forwards on ``module``, top first, as far down as the chain is ours."""
    out, current = [], module.__dict__.get("forward")
    while isinstance(current, OwnedForward):
        out.append(current)
        current = current.previous
    return out


def pop_forward(forward: OwnedForward) -> None:
    """Take ``forward`` off its module, wherever it sits in the stack (idempotent)."""
    module = forward.module
    top = module.__dict__.get("forward")
    if top is forward:
        if forward.previous is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = forward.previous
        return
    for above in forwards_of(module):
        if above.previous is forward:
            above.previous = forward.previous
            return
    if top is not None and not isinstance(top, OwnedForward) and not forward.inert:
        forward.inert = True  # under a forward that is not ours: we cannot reach the link, so we step aside
        log.info("%s has a forward FreezeOut does not own on top of its own: left as a pass-through",
                 type(module).__name__)  # fmt: skip


def strip_forwards(module: nn.Module) -> int:
    """Take every forward of the freeze off ``module`` (``compile_blocks``' stays); returns how many."""
    stripped = [f for f in forwards_of(module) if f.part_of_freeze]
    for forward in stripped:
        pop_forward(forward)
    return len(stripped)
