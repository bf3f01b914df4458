"""Inference mode for a frozen layer, in every call, whatever its ``.training`` flag says.

Training code sets modes in many ways: ``model.train()``, Lightning's loops writing ``module.training`` directly
to restore what they found, a user's ``bn.train()``. So the flag is not touched at all: every module of the frozen
layer gets a first pre-hook that sets ``training = False`` for the length of its call and a hook that puts the flag
back when the call ends (an exception included). Outside a call the flag reads what the user last set; inside,
BatchNorm uses and keeps its running statistics and dropout is off. ``requested(module)`` is the flag as the user
left it, which folding reads (it runs in training forwards only).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..compat import forward_hooks
from ..layers import Layer
from .base import Effect, OwnedHook

__all__ = ["InferenceMode", "in_inference_mode", "requested_training"]


class _Enter(OwnedHook):
    def __init__(self) -> None:
        self.saved: list[bool] = []  # a stack: a module may be called inside its own call (recursion, weight reuse)

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.saved.append(module.training)
        module.training = False


class _Leave(OwnedHook):
    def __init__(self, enter: _Enter) -> None:
        self.enter = enter

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.enter.saved:
            module.training = self.enter.saved.pop()


class InferenceMode(Effect):
    """Every module of ``layer`` runs with ``training = False`` inside its own call (see the module doc)."""

    name = "inference mode"

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer

    def install(self) -> None:
        for m in self.layer.all_modules():
            enter = _Enter()
            self.hook(m, enter, _Leave(enter))


def _enter_hook(module: nn.Module) -> _Enter | None:
    pre, _ = forward_hooks(module)
    return next((h for h in pre.values() if isinstance(h, _Enter)), None)


def in_inference_mode(module: nn.Module) -> bool:
    """Whether ``module`` runs every call in inference mode because FreezeOut froze it."""
    return _enter_hook(module) is not None


def requested_training(module: nn.Module) -> bool:
    """The mode the model asked of ``module``: its flag as the user set it, also while a frozen call runs."""
    enter = _enter_hook(module)
    return enter.saved[0] if enter is not None and enter.saved else module.training
