"""What FreezeOut checks about the layers it was given, and how it says what it found.

``FirstPass`` watches the first training forward after construction (never another: nothing here costs anything
per step) and ``FreezeOut.step()`` judges it:

- layers out of forward order: ``ValueError`` (they would save nothing until the last one froze);
- a layer that shares a parameter or a module with the model outside it (tied weights): ``ValueError``;
- layers that never ran: a ``FrozenInputWarning``.

``judge`` turns what the graph cut found in the forwards since the last step (``effects.cut``) into a
``FrozenInputWarning`` naming the trainable parameters that keep frozen layers in autograd and the bytes that
costs per step (``strict``: ``ValueError``), or into a warning about reentrant activation checkpointing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..compat import in_backward, outermost_module
from ..groups import ParameterNames, check_ties, unwrap
from ..layers import Layer
from .cut import INPUT, PARAMETER, Leak

__all__ = ["FirstPass", "FrozenInputWarning", "judge"]


class FrozenInputWarning(UserWarning):
    """A trainable tensor flows into a frozen layer, so autograd still records the frozen layers."""


class _InertInCopies:
    """A hook that a pickled or deep-copied model keeps as a no-op: it belongs to this process's FreezeOut, not
    to the model (``torch.save(model)`` and ``copy.deepcopy`` must work while FreezeOut watches it)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return _InertInCopies, (_inert,)


def _inert(*args: Any) -> None:
    return None


class FirstPass:
    """Records which layers run, in which order, in the first forward with grad enabled; ``finish()`` judges it
    (once a pass was recorded) and takes its hooks off. Its hooks are no-ops in a copy of the model."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self.order: list[int] = []
        self.root: nn.Module | None = None
        self.opener: nn.Module | None = None  # the module the pass began with: entering it again is a new pass
        self.done = False  # the pass is over: nothing more is recorded
        self.judged = False
        self.unwatched: set[int] = set()
        # kept (as no-ops once judged) until their layer freezes: a module's hooks then change once, not twice,
        # and each change costs a compiled layer (compile_blocks) a recompile
        self.handles: dict[int, list[RemovableHandle]] = {
            layer.index: [m.register_forward_pre_hook(_InertInCopies(self._enter(layer.index))) for m in layer.modules]
            for layer in self.layers
        }

    def _enter(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any) -> None:
            # a training forward, not an evaluation; nor the backward's recomputation nor dynamo's tracing
            if self.done or torch.compiler.is_compiling() or in_backward():
                return
            if self.root is None:
                if not torch.is_grad_enabled():
                    return
                outer = outermost_module()
                self.root, self.opener = (module if outer is None else outer), module
            elif module is self.opener:
                self.done = True  # the first module again: a second pass (a group's other modules are not)
                return
            if index not in self.order:
                self.order.append(index)

        return hook

    def release(self, index: int) -> None:
        """Take the hooks off ``layers[index]``."""
        for h in self.handles.pop(index, []):
            h.remove()
        if not self.judged:
            self.unwatched.add(index)  # frozen before the pass it would have been seen in (a resumed run)

    def close(self) -> None:
        for index in list(self.handles):
            self.release(index)

    def finish(self) -> bool:
        """Judge the recorded pass, if one ran since construction; ``True`` once judged (raise or warn as the module
        doc says)."""
        if self.root is None or self.judged:
            return False
        self.done = self.judged = True
        root = unwrap(self.root)
        for a, b in zip(self.order, self.order[1:]):
            if b < a:
                raise ValueError(
                    f"layers[{a}] runs before layers[{b}] in the forward pass: list the layers in forward order "
                    "(input side first), or nothing is saved until the last of them freezes"
                )
        missing = sorted(set(range(len(self.layers))) - set(self.order) - self.unwatched)
        if missing:
            warnings.warn(f"layers{missing} never ran in the training forward pass: freezing them saves nothing",
                          FrozenInputWarning, stacklevel=4)  # fmt: skip
        names = ParameterNames(root)
        if all(id(m) in names.modules for layer in self.layers for m in layer.modules):
            check_ties(root, self.layers)
        return True


def _message(leak: Leak) -> str:
    label = ", ".join(repr(n) for n in leak.names)
    cost = f"({leak.nbytes / 2**20:.2f} MiB saved for backward per step)"
    if leak.kind == PARAMETER:
        return (
            f"trainable parameter(s) {label} flow into frozen layers[{leak.index}], so autograd still records the "
            f"frozen layers from there on {cost} and they stay in the backward pass: freeze them with the layer "
            "they feed (list them in it, e.g. [module, param], or use find_layers, which attaches them), or move "
            "them after the last layer"
        )
    what = "an input of the model" if leak.kind == INPUT else "a tensor held by the model"
    named = f" ({label})" if label else ""
    return (
        f"{what} that requires grad{named} flows into frozen layers[{leak.index}]: its gradient flows through the "
        f"frozen layers as through a copy frozen by hand, so they stay in the backward pass {cost}; nothing is cut"
    )


def judge(reports: Sequence[Leak], strict: bool) -> None:
    """Warn about what the graph cut kept uncut (a trainable parameter with ``strict``: raise ``ValueError``)."""
    for leak in reports:
        if leak.reentrant and not leak.params:
            warnings.warn(
                f"frozen layers[{leak.index}] runs under reentrant activation checkpointing (torch.utils.checkpoint "
                "with use_reentrant=True around the layer's call) with an input that requires grad: the backward "
                "pass still recomputes the frozen layers, whatever FreezeOut does. Checkpoint with "
                "use_reentrant=False (Hugging Face's default) to get the saving",
                FrozenInputWarning,
                stacklevel=4,
            )
            continue
        if strict and leak.kind == PARAMETER:
            raise ValueError(_message(leak))
        warnings.warn(_message(leak), FrozenInputWarning, stacklevel=4)
