"""Inference mode for a frozen layer in every call, however it is called and whatever sets its mode, at no cost per
call: each module's class is swapped for a subclass whose ``training`` reads ``False`` (as ``torch.nn.utils.
parametrize`` swaps classes); a write is kept as the mode the user asked for (``requested_training``) and given back
when the module is unfrozen. The subclass has the base's name and pickles as the frozen form of its base (docs/
METHOD.md, "What frozen means")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..layers import Layer
from .effect import Effect

__all__ = ["InferenceMode", "eval_mode", "in_inference_mode", "lock_eval", "requested_training", "unlock_eval"]

_CLASSES: dict[type, type] = {}  # base class -> its frozen subclass, made once per class


def _read(self: nn.Module) -> bool:
    return False


def _write(self: nn.Module, mode: bool) -> None:
    self.__dict__["training"] = mode  # what the user asked for: the flag the module gets back when unfrozen


def _frozen_form(base: type) -> nn.Module:
    module = nn.Module.__new__(frozen_class(base))
    return module


def _reduce_ex(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    # the frozen class is made at run time: pickle it as "the frozen form of its base", which is importable
    return _frozen_form, (type(self).__freezeout_base__,), self.__getstate__()


def frozen_class(base: type) -> type:
    """The subclass of ``base`` whose ``training`` always reads ``False`` (made once per class)."""
    cls = _CLASSES.get(base)
    if cls is None:
        namespace = {
            "training": property(_read, _write, doc="False while frozen by FreezeOut; writes are kept for later"),
            "__freezeout_base__": base,
            "__reduce_ex__": _reduce_ex,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
        }
        cls = _CLASSES[base] = type(base.__name__, (base,), namespace)
    return cls


def in_inference_mode(module: nn.Module) -> bool:
    """Whether ``module`` runs every call in inference mode because FreezeOut froze it."""
    return "__freezeout_base__" in type(module).__dict__


def requested_training(module: nn.Module) -> bool:
    """The mode the model asked of ``module``: its flag as the user last set it, also while it is frozen."""
    if in_inference_mode(module):
        return bool(module.__dict__.get("training", True))
    return module.training


def lock_eval(module: nn.Module) -> bool:
    """Swap ``module``'s class for its frozen form; False if it was frozen already."""
    if in_inference_mode(module):
        return False
    flag = module.training
    module.__class__ = frozen_class(type(module))
    module.__dict__["training"] = flag
    return True


def unlock_eval(module: nn.Module) -> bool:
    """Give ``module`` its own class back, its ``training`` flag as last set; False if it was not frozen.

    A class swapped again on top of ours (FSDP2's ``fully_shard`` after the freeze) cannot be unwound: the module
    keeps it, and says so by returning False."""
    cls = type(module)
    base = cls.__dict__.get("__freezeout_base__")
    if base is None:
        return False
    flag = module.__dict__.get("training", True)
    module.__class__ = base
    module.training = flag
    return True


class InferenceMode(Effect):
    """Every module of ``layer`` reads ``training = False`` while frozen (see the module doc)."""

    name = "inference mode"

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer
        self.locked: list[nn.Module] = []

    def install(self) -> None:
        self.locked = [m for m in self.layer.all_modules() if lock_eval(m)]

    def remove(self) -> None:
        for m in self.locked:
            unlock_eval(m)
        self.locked = []


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode inside the block, each one's own mode restored after.

    A probe (a traced pass, a FLOP count) must leave BatchNorm statistics and modes as found: each module gets back
    the mode it was asked for, a frozen one too (which reads ``False`` while frozen, ``freezing.mode``).
    """
    modes = [(m, requested_training(m)) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
